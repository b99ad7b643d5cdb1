"""When the database goes away: a turn is answered 503 (Teams sends it again) and its re-send is answered once;
only real outages count as outages; start and stop hand everything back whatever fails.

Outages are real: PostgreSQL is a server of the test's own, stopped with an immediate shutdown (as a crash) and
started again; SQLite is locked by another connection (`BEGIN EXCLUSIVE`) past the bot's busy timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
from collections.abc import Sequence

import aiohttp
import asyncpg
import pytest

from bot.config import Config
from bot.log_repeats import RepeatFilter
from state.availability import Availability, is_unavailable, reason
from state.db import connect
from state.outbox import OutboxItem, OutboxRow
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble
from tests.outages import BUSY_TIMEOUT_S, Outage, outage_fixture  # noqa: F401 - the `outage` fixture
from tests.test_delivery import Flaky, Rig, rig, text  # noqa: F401 - the delivery worker's rig fixture


def replies(double: ConnectorDouble, conversation_id: str) -> list[str]:
    return [str(a.get("text") or "") for a in double.sent_activities(conversation_id)]


async def test_a_turn_during_an_outage_gets_503_and_its_resend_after_the_return_is_answered_once(
    outage: Outage, start_bot: StartBot, http: aiohttp.ClientSession
) -> None:
    async with ConnectorDouble() as double:
        app = await start_bot(Config(database_url=outage.url, database_busy_timeout=BUSY_TIMEOUT_S))
        chat = Chat(http, app, double, conversation_id="dm-new-in-outage", user_id="29:grace")
        message = chat.activity("message", text="help")
        button = chat.activity("invoke", name="adaptiveCard/action",
                               value={"action": {"type": "Action.Execute", "verb": "x", "data": {}}})
        await outage.down()
        try:
            async with http.post(bot_url(app), json=message) as response:
                body = await response.json()
                assert response.status == 503, body
                assert response.headers["Retry-After"] == "5"
                assert body["error"]["code"] == "DatabaseUnavailable"
            async with http.post(bot_url(app), json=button) as response:
                body = await response.json()
                assert response.status == 503, body
                assert body["type"] == "application/vnd.microsoft.error" and body["statusCode"] == 503
                assert body["value"]["code"] == "ServiceUnavailable" and body["value"]["message"]
            assert not app.availability.up and app.availability.reason
            async with http.get(bot_url(app, "/healthz")) as response:
                assert response.status == 503
            async with http.get(bot_url(app, "/livez")) as response:
                assert response.status == 200
        finally:
            await outage.up()
        assert await chat.post(message) == 200, "the re-sent activity is processed once the database is back"
        await chat.settle()
        assert len(replies(double, chat.conversation_id)) == 1, replies(double, chat.conversation_id)
        assert await chat.post(message) == 200, "sent again (as Teams does after a slow answer): answered"
        await chat.settle()
        assert len(replies(double, chat.conversation_id)) == 1, "and not processed a second time"
        assert not any("went wrong" in t for t in replies(double, chat.conversation_id)), "no apology"


async def test_the_database_is_marked_back_and_parts_woken_within_seconds(
    outage: Outage, start_bot: StartBot, http: aiohttp.ClientSession
) -> None:
    async with ConnectorDouble() as double:
        app = await start_bot(Config(database_url=outage.url, database_busy_timeout=BUSY_TIMEOUT_S,
                                     notify_token="tok"))
        chat = Chat(http, app, double, conversation_id="dm-back")
        await chat.say("help")
        changes: asyncio.Queue[bool] = asyncio.Queue()
        app.availability.on_change(changes.put_nowait)
        await outage.down()
        try:
            newcomer = Chat(http, app, double, conversation_id="dm-newcomer", user_id="29:newcomer")
            assert await newcomer.post(newcomer.activity("message", text="help")) == 503  # a write finds out
            async with http.get(bot_url(app, "/healthz")) as response:
                assert response.status == 503
            assert not app.availability.up
        finally:
            await outage.up()
        assert await asyncio.wait_for(changes.get(), 10) is False, "it went away once"
        assert await asyncio.wait_for(changes.get(), 10) is True, "the probe sees the return"
        async with http.post(bot_url(app, "/api/notify"), headers={"Authorization": "Bearer tok"},
                             json={"to": {"conversations": ["dm-back"]}, "text": "after the return"}) as response:
            assert response.status == 202, await response.text()
        await double.wait_for(lambda r: r.op == "send" and "after the return" in str(r.body.get("text")), timeout=5)
        assert app.availability.outage_seconds() > 0 and app.availability.outages == 1
        async with http.get(bot_url(app, "/metrics")) as response:
            exposition = await response.text()
        assert "bot_database_available 1.0" in exposition and "bot_database_outages_total 1.0" in exposition


# -- what counts as an outage ---------------------------------------------------------------------------------


async def test_engine_connection_errors_count_as_outages_and_bugs_do_not() -> None:
    assert is_unavailable(asyncpg.CannotConnectNowError("the database system is starting up"))
    assert is_unavailable(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    assert is_unavailable(asyncpg.AdminShutdownError("terminating connection due to administrator command"))
    assert is_unavailable(asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"))
    assert is_unavailable(sqlite3.OperationalError("database is locked"))
    assert is_unavailable(RuntimeError("wrapped")) is False
    wrapped = RuntimeError("storage write failed")
    wrapped.__cause__ = sqlite3.OperationalError("database is locked")
    assert is_unavailable(wrapped), "an error raised from an outage is one"
    assert not is_unavailable(sqlite3.OperationalError("no such table: nope"))
    assert not is_unavailable(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not is_unavailable(asyncpg.UniqueViolationError("duplicate key"))
    assert not is_unavailable(KeyError("a bug"))
    assert not is_unavailable(ConnectionRefusedError("refused")), "a socket error outside the drivers is not one"
    with pytest.raises(OSError) as raised:  # nothing listens on port 9: refused inside the driver
        await asyncpg.connect("postgresql://bot@127.0.0.1:9/none", timeout=2)
    assert is_unavailable(raised.value)
    assert reason(sqlite3.OperationalError("database is locked\nmore")) == "OperationalError: database is locked"


def test_availability_logs_once_down_and_once_back_with_the_duration(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    availability = Availability(lambda: now[0])
    with caplog.at_level(logging.INFO, logger="state.availability"):
        assert availability.went_down("ConnectionRefusedError: refused")
        for _ in range(50):
            assert not availability.went_down("ConnectionRefusedError: refused")
        now[0] += 15.0
        assert availability.came_back()
        assert not availability.came_back()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["database unavailable: ConnectionRefusedError: refused",
                     "database available again after 15.0 s"]
    assert availability.outage_seconds() == 15.0 and availability.outages == 1


def test_repeated_warnings_are_said_once_a_minute_with_a_count() -> None:
    now = [0.0]
    repeats = RepeatFilter(window_s=60, monotonic=lambda: now[0])
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("tests.repeats")
    handler = Keep()
    handler.addFilter(repeats)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        for second in range(15):
            now[0] = float(second)
            logger.warning("could not claim %d job(s)", second)
            logger.info("info passes %d", second)
        assert [r for r in records if r.startswith("could not")] == ["could not claim 0 job(s)"]
        now[0] = 61.0
        logger.warning("could not claim %d job(s)", 61)
        assert records[-1] == "could not claim 61 job(s) (… 14 more in the last minute)"
        now[0] = 70.0
        logger.warning("could not claim %d job(s)", 70)
        now[0] = 200.0
        repeats.flush()
        assert records[-1] == "could not claim 70 job(s) (… 1 more in the last minute)"
        assert sum(r.startswith("info passes") for r in records) == 15
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


async def test_a_bug_in_the_target_lookup_uses_attempts_and_logs_its_traceback_once(
    rig: Rig, caplog: pytest.LogCaptureFixture  # noqa: F811 - the fixture imported above
) -> None:
    await rig.known("a")
    bug = KeyError("a bug in the lookup")
    [row] = await rig.proactive.enqueue([OutboxItem(text("hi"), conversation_id="a")])
    rig.references.get_many = Flaky(rig.references.get_many, 100, bug)  # type: ignore[method-assign]
    rig.references.get = Flaky(rig.references.get, 100, bug)  # type: ignore[method-assign]
    await rig.run()
    stored = await rig.store.get(row.id)
    assert stored is not None and (stored.status, stored.attempts) == ("failed", 4), "every attempt used, then failed"
    assert "KeyError" in (stored.last_error or "")
    tracebacks = [r for r in caplog.records if r.exc_info and "unexpected error" in r.getMessage()]
    assert len(tracebacks) == 1, "its traceback once"
    assert sum("unexpected error" in r.getMessage() for r in caplog.records) == 4, "one line per attempt"
    assert "bot_database_errors_total{" not in rig.worker.metrics.exposition().decode(), "not a database error"
    assert rig.double.find(op="send") == []


# -- lifecycle -------------------------------------------------------------------------------------------------


async def _claimed(url: str) -> tuple[int, int]:
    db = connect(url)
    await db.open()
    try:
        rows = await db.fetchone("SELECT COUNT(*) AS n FROM outbox WHERE claimed_by IS NOT NULL")
        leases = await db.fetchone("SELECT COUNT(*) AS n FROM tenant_leases")
        assert rows is not None and leases is not None
        return int(rows["n"]), int(leases["n"])
    finally:
        await db.close()


async def _seed(url: str, double_url: str) -> None:
    from tests.outbox_seed import seed_references

    await seed_references(url, double_url, [("a:life-1", "t1"), ("a:life-2", "t2")])
    db = connect(url)
    await db.open()
    try:
        from state.clock import SystemClock
        from state.outbox import OutboxStore

        await OutboxStore(db, SystemClock()).enqueue(
            [OutboxItem(text("waiting"), conversation_id=c, tenant_id=t) for c, t in (("a:life-1", "t1"),
                                                                                     ("a:life-2", "t2"))])
    finally:
        await db.close()


async def test_a_start_that_fails_on_a_taken_port_hands_everything_back(
    start_bot: StartBot, bot_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from bot.app import BotApplication

    caplog.set_level(logging.INFO)
    claimed: list[int] = []
    async with ConnectorDouble() as double:
        await _seed(bot_database_url, double.url)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            app = BotApplication(Config(database_url=bot_database_url))
            submit = app.worker.submit

            def held_not_sent(rows: Sequence[OutboxRow]) -> None:
                claimed.append(len(rows))
                submit(rows)  # held by the worker (it hands back what it holds) ...

            app.worker.submit = held_not_sent  # type: ignore[method-assign]
            app.worker.pump = lambda: 0  # type: ignore[method-assign] # ... but not sent
            with pytest.raises(OSError):
                await app.start(host="127.0.0.1", port=taken.getsockname()[1])
    assert sum(claimed) == 2, "the start claimed the waiting rows"
    assert await _claimed(bot_database_url) == (0, 0), "claims handed back, tenant leases released"
    with pytest.raises(RuntimeError, match="not open"):
        await app.db.fetchone("SELECT 1")
    assert "stopped" in caplog.text


async def test_a_failing_stop_of_one_part_still_stops_the_others(
    start_bot: StartBot, bot_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with ConnectorDouble() as double:
        await _seed(bot_database_url, double.url)
        app = await start_bot(Config(database_url=bot_database_url))
        await app.worker.flush()
        assert (await _claimed(bot_database_url))[1] > 0, "the replica holds tenant leases"

        async def broken(timeout: float = 10.0) -> None:
            raise RuntimeError("the scheduler cannot stop")

        dispatcher = app.scheduler._dispatcher
        real_stop = dispatcher.stop
        dispatcher.stop = broken  # type: ignore[method-assign]
        await app.stop()
        await real_stop()  # (its tasks, which the failed stop left running)
    assert await _claimed(bot_database_url) == (0, 0)
    with pytest.raises(RuntimeError, match="not open"):
        await app.db.fetchone("SELECT 1")
    assert "stopping the scheduler failed" in caplog.text and "these parts failed to stop: scheduler" in caplog.text


# -- settings ---------------------------------------------------------------------------------------------------


def test_database_url_may_name_a_primary_and_its_standbys() -> None:
    from state.db import DatabaseUrlError, parse_database_url

    url = parse_database_url("postgresql://bot:s3cret@db-a.internal:5432,db-b.internal:5433/bot"
                             "?target_session_attrs=read-write&sslmode=require")
    assert url.display == "postgresql://bot@db-a.internal:5432,db-b.internal:5433/bot" and "s3cret" not in url.display
    assert parse_database_url("postgresql://bot@[::1]:5432/bot").display == "postgresql://bot@[::1]:5432/bot"
    for bad, named in [
        ("postgresql://bot@a:5432,b:99999/bot?target_session_attrs=read-write", "port"),
        ("postgresql://bot@a:5432,:5432/bot?target_session_attrs=read-write", "needs a host"),
        ("postgresql://bot@a,b/bot", "target_session_attrs=read-write"),  # could land on a standby
        ("postgresql://bot@a/bot?target_session_attrs=whatever", "target_session_attrs must be"),
        ("postgresql://bot@a:5432\x00,b/bot?target_session_attrs=read-write", "port"),
    ]:
        with pytest.raises(DatabaseUrlError, match=named):
            parse_database_url(bad)


@pytest.mark.parametrize("value", ["0", "-1", "ten", "1e400", "nan"])
def test_a_bad_busy_timeout_stops_start_up_naming_it(value: str) -> None:
    from bot.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="DATABASE_BUSY_TIMEOUT"):
        load_config({"DATABASE_BUSY_TIMEOUT": value}, env_file=None)
    assert load_config({"DATABASE_BUSY_TIMEOUT": "0.5"}, env_file=None).database_busy_timeout == 0.5
