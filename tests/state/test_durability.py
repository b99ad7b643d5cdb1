"""SQLite commits survive a power loss: `synchronous=FULL` unless DATABASE_URL asks for NORMAL (issue 20)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, load_config
from state.db import connect


@pytest.mark.parametrize(("query", "level"), [("", 2), ("?synchronous=full", 2), ("?synchronous=NORMAL", 1)])
async def test_sqlite_runs_with_full_synchronous_by_default(tmp_path: Path, query: str, level: int) -> None:
    db = connect(f"sqlite:///{tmp_path}/bot.sqlite3{query}")
    await db.open()
    try:
        row = await db.fetchone("PRAGMA synchronous")
        assert row is not None and row[0] == level  # 2 = FULL, 1 = NORMAL
        mode = await db.fetchone("PRAGMA journal_mode")
        assert mode is not None and mode[0] == "wal"
    finally:
        await db.close()


@pytest.mark.parametrize("query", ["?synchronous=off", "?synchronous=", "?cache=shared", "?synchronous=full&x=1"])
def test_other_sqlite_options_are_refused_naming_the_variable(tmp_path: Path, query: str) -> None:
    with pytest.raises(ConfigError, match=r"DATABASE_URL .*synchronous=normal"):
        load_config({"DATABASE_URL": f"sqlite:///{tmp_path}/bot.sqlite3{query}"}, env_file=None)
