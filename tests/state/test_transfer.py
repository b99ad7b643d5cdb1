"""Moving the bot's data between engines (`python -m state.transfer`): SQLite → PostgreSQL and back, every
table equal afterwards, generated ids continuing after the copied ones, a non-empty target refused."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from scheduler.scheduler import Scheduler
from state.broadcasts import BroadcastStore
from state.clock import FakeClock
from state.db import Database, connect
from state.model import Condition, Observation, UserRef
from state.outbox import OutboxItem, OutboxStore
from state.preferences import Preferences
from state.prices import PriceLog
from state.references import ConversationRecord, ConversationReferences
from state.storage import DatabaseStorage
from state.transfer import TABLES, TransferError, transfer
from state.watches import WatchStore

ROOT = Path(__file__).resolve().parents[2]


async def fill(db: Database, clock: FakeClock) -> None:
    """A little of everything, written by the stores themselves."""
    await DatabaseStorage(db, clock).write({"msteams/conversations/c1/users/29:ada/": {"dialog": {"stack": []}}})
    references = ConversationReferences(db, clock)
    for conversation, user in (("c1", "29:ada"), ("19:team@thread.tacv2", "29:bob")):
        await references.upsert(ConversationRecord(
            conversation_id=conversation, channel_id="msteams", service_url="https://smba.example/emea/",
            reference={"conversation": {"id": conversation}}, tenant_id="t1", conversation_type="personal",
            user_id=user, user_name=user[3:].title()), reactivate=True)
    outbox = OutboxStore(db, clock)
    sent = await outbox.enqueue([OutboxItem({"type": "message", "text": "Ünïcode ✓"}, conversation_id="c1",
                                            tenant_id="t1", dedup_key="d1")])
    await outbox.enqueue([OutboxItem({"type": "message", "text": "v2"}, conversation_id="c1", tenant_id="t1",
                                     kind="update", update_of=sent[0].id)])
    broadcast = await BroadcastStore(db, outbox, clock).create("b" * 32, {"all": True},
                                                               {"type": "message", "text": "B"})
    [row] = await outbox.enqueue([OutboxItem({}, conversation_id="c1", tenant_id="t1", broadcast_id=broadcast)])
    await outbox.set_status([row.id], "dropped")  # counted by the trigger: copied as counted, not counted again
    scheduler = Scheduler(db, clock)
    scheduler.register("poll", _nothing)
    await scheduler.schedule_at(clock.now() + timedelta(hours=1), "poll", {"product": "gadget"}, key="poll:gadget")
    await WatchStore(db, clock).add(UserRef("29:ada", "aad-ada", "Ada"), "c1", "gadget",
                                    Condition("below", Decimal("9.5")))
    await PriceLog(db, clock).record(Observation("gadget", Decimal("10.25"), "USD", "demo", None, clock.now()))
    await Preferences(db, clock).remember_timezone("user:29:ada", "Europe/Berlin")


async def _nothing(payload: dict[str, Any]) -> None:
    pass


async def contents(db: Database) -> dict[str, list[dict[str, Any]]]:
    return {t.name: [dict(r.items()) if hasattr(r, "items") else {k: r[k] for k in r.keys()}  # noqa: SIM118 - sqlite3.Row iterates values
                     for r in await db.fetchall(f"SELECT * FROM {t.name} ORDER BY {t.key}")] for t in TABLES}


@pytest.mark.parametrize("direction", ["sqlite to postgresql", "postgresql to sqlite"])
async def test_everything_arrives_and_ids_continue(direction: str, tmp_path: Path, postgres_url: str) -> None:
    clock = FakeClock()
    sqlite = connect(f"sqlite:///{tmp_path}/bot.sqlite3")
    postgres = connect(postgres_url)
    await sqlite.open()
    await postgres.open()
    source, target = (sqlite, postgres) if direction.startswith("sqlite") else (postgres, sqlite)
    try:
        await fill(source, clock)
        copied = await transfer(source, target)
        before = await contents(source)
        assert await contents(target) == before
        assert copied["outbox"] == 3 and copied["broadcasts"] == 1
        assert copied["conversation_members"] == 2 and copied["watches"] == 1
        assert all(before[t.name] for t in TABLES if t.name not in ("engagement", "engagement_members",
                                                                     "analyses")), \
            "the fixture wrote to the tables it claims to"
        largest = max(row["id"] for row in before["outbox"])
        new = await OutboxStore(target, clock).enqueue([OutboxItem({"type": "message", "text": "after"},
                                                                   conversation_id="c1", tenant_id="t1")])
        assert new[0].created and new[0].id > largest, "generated ids continue after the copied ones"
        with pytest.raises(TransferError, match="already holds rows"):
            await transfer(source, target)
    finally:
        await sqlite.close()
        await postgres.close()


def transfer_command(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it (its own process and event loop)."""
    return subprocess.run([sys.executable, "-m", "state.transfer", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_command_names_what_is_wrong(tmp_path: Path) -> None:
    refused = transfer_command("mysql://nope", f"sqlite:///{tmp_path}/t.sqlite3")
    assert refused.returncode == 2 and "transfer refused" in refused.stderr
    usage = transfer_command("only-one")
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_the_command_copies_between_files(tmp_path: Path) -> None:
    done = transfer_command(f"sqlite:///{tmp_path}/a.sqlite3", f"sqlite:///{tmp_path}/b.sqlite3")
    assert done.returncode == 0, done.stderr
    assert "outbox" in done.stdout and done.stdout.strip().endswith("start the bot")
