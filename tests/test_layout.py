"""The package map holds: who may import whom (docs/architecture.md), and where SQL may live.

Reads every module's source with `ast` (imports anywhere in a module count, including inside functions
and under TYPE_CHECKING), so a new import that breaks a boundary fails here, not in review.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "dialogs", "state", "scheduler")
SDK = ("botbuilder", "botframework", "msrest")
SQL = re.compile(r"\b(SELECT\s+.+\s+FROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b", re.I | re.S)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    found["main"] = ROOT / "main.py"
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of everything `path` imports (relative imports resolved against `name`)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


MODULES = modules()
IMPORTS = {name: imports_of(name, path) for name, path in MODULES.items()}


def _hits(name: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(i for i in IMPORTS[name] if any(i == p or i.startswith(p + ".") for p in prefixes))


def test_the_map_sees_every_package() -> None:
    assert {"bot.app", "bot.teams.handler", "state.model", "scheduler.store", "dialogs.main_dialog"} <= set(MODULES)
    assert _hits("bot.teams.handler", SDK), "the scanner must find the handler's botbuilder imports"
    assert SQL.search(MODULES["state.outbox"].read_text()), "the SQL pattern must recognise the outbox's SQL"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("scheduler")))
def test_scheduler_imports_neither_bot_nor_dialogs_nor_the_sdk(name: str) -> None:
    assert _hits(name, ("bot", "dialogs", *SDK)) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("state")))
def test_state_imports_neither_bot_nor_dialogs_nor_scheduler(name: str) -> None:
    """`state/` is the bottom floor: `scheduler/` may build on it, never the other way round."""
    assert _hits(name, ("bot", "dialogs", "scheduler")) == []


@pytest.mark.parametrize("source", [
    "from scheduler.clock import Clock\n",
    "import scheduler\n",
    "def later():\n    from scheduler import Scheduler\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from scheduler.store import JobStore\n",
    "from ..scheduler import jobs\n",
])
def test_the_scanner_sees_an_import_from_state_into_scheduler(tmp_path: Path, source: str) -> None:
    """The rule above cannot pass vacuously: every spelling of such an import is found."""
    module = tmp_path / "outbox.py"
    module.write_text(source)
    hits = sorted(i for i in imports_of("state.outbox", module) if i == "scheduler" or i.startswith("scheduler."))
    assert hits, source


def test_the_clock_sits_on_the_bottom_floor() -> None:
    assert "state.clock" in MODULES and "scheduler.clock" not in MODULES
    assert "state.clock" in IMPORTS["scheduler.scheduler"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_teams_edge_dialogs_and_storage_import_the_sdk(name: str) -> None:
    allowed = name.startswith(("bot.teams", "dialogs")) or name == "state.storage"
    if not allowed:
        assert _hits(name, SDK) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("bot") and not n.startswith("bot.teams")))
def test_only_the_factory_imports_the_teams_edge(name: str) -> None:
    if name != "bot.app":
        assert _hits(name, ("bot.teams",)) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("dialogs")))
def test_dialogs_do_not_import_bot(name: str) -> None:
    assert _hits(name, ("bot",)) == []


def test_the_domain_model_is_pure() -> None:
    ours = ("bot", "dialogs", "state", "scheduler", *SDK, "aiohttp", "aiosqlite", "asyncpg", "sqlite3")
    assert _hits("state.model", ours) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_sql_lives_in_state_and_the_job_store(name: str) -> None:
    if name.startswith("state") or name == "scheduler.store":
        return
    strings = [n.value for n in ast.walk(ast.parse(MODULES[name].read_text())) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)]
    assert [s for s in strings if SQL.search(s)] == []
