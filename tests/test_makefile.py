"""What the Makefile's targets install on a fresh clone (make's dry run, in an empty copy of the packaging
files) and what `make run` prints first."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bot.config import load_config
from main import banner

ROOT = Path(__file__).resolve().parent.parent


def dry_run(tmp_path: Path, target: str) -> str:
    """`make -n TARGET` where nothing is installed yet (no .venv, no node_modules)."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed", pytrace=False)
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / "tests" / "node").mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(ROOT / "tests" / "node" / name, tmp_path / "tests" / "node" / name)
    done = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=tmp_path, capture_output=True,
                          text=True, check=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    return done.stdout


def test_make_run_installs_only_what_running_needs(tmp_path: Path) -> None:
    out = dry_run(tmp_path, "run")
    assert "pip install" in out and " -e ." in out
    assert ".[test" not in out and "[bench]" not in out and "npm" not in out
    assert out.strip().splitlines()[-1].endswith("main.py")


def test_make_test_and_bench_bring_their_extras(tmp_path: Path) -> None:
    assert "-e '.[test]'" in dry_run(tmp_path, "test")
    bench = dry_run(tmp_path, "bench")
    assert "-e '.[bench]'" in bench and ".[test" not in bench


def test_make_playground_installs_the_pinned_playground_with_npm_ci(tmp_path: Path) -> None:
    out = dry_run(tmp_path, "playground")
    assert "npm ci" in out and ".[test" not in out
    assert out.strip().splitlines()[-1].endswith("local_playground.py")


def test_the_first_lines_say_where_it_listens_and_how_to_chat(tmp_path: Path) -> None:
    lines = banner(load_config({"PORT": "3978"}, tmp_path / "none.env")).splitlines()
    assert lines[0].endswith("http://127.0.0.1:3978/api/messages")
    assert "make playground" in lines[1]


def test_a_teams_deployment_is_not_told_to_use_the_playground(tmp_path: Path) -> None:
    config = load_config({"HOST": "0.0.0.0", "MicrosoftAppId": "11111111-2222-3333-4444-555555555555",
                          "MicrosoftAppPassword": "s", "METRICS_TOKEN": "m"}, tmp_path / "none.env")
    text = banner(config)
    assert "http://0.0.0.0:3978/api/messages" in text and "make playground" not in text
