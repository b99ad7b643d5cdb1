"""Operators' view: /metrics moves as the scenario says, a broadcast's status goes from unfinished to finished,
JSON log lines parse and carry the ids of what they are about."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app import BotApplication
from bot.logs import JsonFormatter
from bot.metrics import Metrics, TenantQueue, bounded_tenants
from state.clock import FakeClock
from state.outbox import OutboxItem
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble
from tests.test_notify import AUTH, TOKEN, notify, say_hello

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


async def scrape(http: aiohttp.ClientSession, app: BotApplication, headers: dict[str, str] | None = None) -> Samples:
    async with http.get(bot_url(app, "/metrics"), headers=headers or {}) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def deliver_all(app: BotApplication, clock: FakeClock) -> None:
    """Send until nothing is left, moving the fake clock to each next wake-up (Retry-After, backoff)."""
    worker = app.worker
    for _ in range(50):
        worker.pump()
        await worker.idle()
        wake = worker._queue.next_wake()
        if wake is None:
            break
        clock.advance(max(0.0, wake - clock.monotonic()))
    await worker.flush()


async def test_a_fan_out_with_one_429_and_one_403_shows_in_the_right_counters(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    for i in range(4):
        await say_hello(http, app, double, f"c{i}", f"29:u{i}")
    double.fail_next("throttled", conversation_id="c1")  # Retry-After: 1
    double.fail_next("blocked_by_user", conversation_id="c2")
    status, body = await notify(http, app, {"to": {"all": True}, "text": "Sale starts now"})
    assert status == 202 and body["queued"] == 4
    await deliver_all(app, fake_clock)

    samples = await scrape(http, app)
    sends = "bot_proactive_messages_total"
    assert value(samples, sends, category="notification", outcome="queued") == 4
    assert value(samples, sends, category="notification", outcome="sent") == 3  # c0, c3, and c1 after its retry
    assert value(samples, sends, category="notification", outcome="throttled") == 1
    assert value(samples, sends, category="notification", outcome="retried") == 1
    assert value(samples, sends, category="notification", outcome="cancelled") == 1  # c2 blocked the bot
    assert value(samples, sends, category="notification", outcome="failed") == 0
    assert value(samples, "bot_teams_throttled_total") == 1
    assert value(samples, "bot_teams_retry_after_seconds_total") == 1
    assert value(samples, "bot_send_seconds_count") == 5  # four sends and the retry
    assert value(samples, "bot_outbox_rows", status="sent") == 3
    assert value(samples, "bot_outbox_rows", status="cancelled") == 1
    assert value(samples, "bot_queue_pending", tenant="t1") == 0
    assert value(samples, "bot_turns_total", type="conversationUpdate", outcome="ok") == 4
    assert value(samples, "bot_turn_seconds_count", type="conversationUpdate") == 4
    async with http.get(bot_url(app, "/healthz?detail=1")) as response:
        delivery = (await response.json())["delivery"]
    assert (delivery["sent"], delivery["throttled"], delivery["cancelled"]) == (3, 1, 1), "one bookkeeping"


async def test_refused_and_unknown_turns_are_counted_with_bounded_labels(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble,
) -> None:
    app = await start_bot()
    activity = {"type": "x" * 50, "channelId": "msteams", "serviceUrl": double.url, "conversation": {"id": "c"},
                "from": {"id": "u"}}
    async with http.post(bot_url(app), json=activity) as response:
        assert response.status == 200
    async with http.post(bot_url(app), json={**activity, "type": "message", "serviceUrl": "nope"}) as response:
        assert response.status == 400
    async with http.post(bot_url(app), json={**activity, "type": "message", "channelId": "webchat"}) as response:
        assert response.status == 403
    samples = await scrape(http, app)
    assert value(samples, "bot_turns_total", type="other", outcome="ok") == 1, "client-chosen types are not labels"
    assert value(samples, "bot_turns_total", type="message", outcome="refused") == 1
    assert value(samples, "bot_turns_total", type="message", outcome="forbidden") == 1, "other channels are counted"


async def test_metrics_token_protects_the_route(start_bot: StartBot, http: aiohttp.ClientSession) -> None:
    app = await start_bot(metrics_token="m-secret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic m-secret"}):
        async with http.get(bot_url(app, "/metrics"), headers=headers) as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    samples = await scrape(http, app, {"Authorization": "Bearer m-secret"})
    assert ("bot_scheduler_dead_jobs", ()) in samples


async def test_queue_gauges_name_the_top_tenants_and_sum_the_rest(start_bot: StartBot, http: aiohttp.ClientSession,
                                                                  fake_clock: FakeClock) -> None:
    app = await start_bot()
    later = fake_clock.now().timestamp() + 3600  # not due yet: stays pending
    await app.outbox.enqueue([OutboxItem({"type": "message", "text": "x"}, conversation_id=f"c-{t}-{i}",
                                         tenant_id=f"tenant-{t:02d}", not_before=later)
                              for t in range(15) for i in range(t + 1)])
    fake_clock.advance(90)
    samples = await scrape(http, app)
    tenants = {dict(labels)["tenant"]: v for (name, labels), v in samples.items() if name == "bot_queue_pending"}
    assert len(tenants) == 11 and tenants["tenant-14"] == 15 and tenants["tenant-05"] == 6
    assert tenants["other"] == sum(range(1, 5 + 1)), "the five smallest tenants are summed"
    assert value(samples, "bot_queue_oldest_pending_seconds", tenant="tenant-14") == 90
    assert value(samples, "bot_outbox_rows", status="pending") == sum(range(1, 16))


def test_bounded_tenants_ties_and_missing_tenant() -> None:
    queues = [TenantQueue(None, 3, 10.0), TenantQueue("a", 3, 5.0), TenantQueue("b", 1, 1.0)]
    assert bounded_tenants(queues, 2) == [("a", 3, 5.0), ("none", 3, 10.0), ("other", 1, 1.0)]


async def test_scheduler_lag_and_two_apps_keep_their_own_registries(
    start_bot: StartBot, http: aiohttp.ClientSession, fake_clock: FakeClock, tmp_path: Any,
) -> None:
    from bot.config import Config

    app = await start_bot()
    other = await start_bot(Config(database_url=f"sqlite:///{tmp_path}/other.sqlite3"))

    await app.scheduler.schedule_in(5, "stats.log")  # a registered no-op
    fake_clock.advance(70)  # the 5 s job starts 65 s late
    await app.scheduler.run_due()
    samples = await scrape(http, app)
    assert value(samples, "bot_scheduler_lag_seconds_count") >= 1
    assert value(samples, "bot_scheduler_lag_seconds_bucket", le="60.0") < value(
        samples, "bot_scheduler_lag_seconds_count"), "a job due 60 s ago started over 60 s late"
    assert value(await scrape(http, other), "bot_scheduler_lag_seconds_count") == 0
    assert app.metrics.registry is not other.metrics.registry


async def test_a_broadcast_goes_from_unfinished_to_finished(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    for i in range(3):
        await say_hello(http, app, double, f"c{i}", f"29:u{i}")
    double.fail_next("bad_argument", conversation_id="c2")
    status, body = await notify(http, app, {"to": {"all": True}, "text": "Maintenance at 6pm", "dedupKey": "m1"})
    assert status == 202
    batch_url = bot_url(app, f"/api/notify/batches/{body['batchId']}")
    async with http.get(batch_url, headers=AUTH) as response:
        before = await response.json()
    assert before["finished"] is False and before["finishedAt"] is None
    assert before["targets"] == 3 and before["requested"] == 3 and before["counts"] == {"pending": 3}
    await deliver_all(app, fake_clock)
    async with http.get(batch_url, headers=AUTH) as response:
        after = await response.json()
    assert after["finished"] is True and after["counts"] == {"sent": 2, "failed": 1}
    assert after["startedAt"] == before["startedAt"] and after["finishedAt"] >= after["startedAt"]
    _, again = await notify(http, app, {"to": {"all": True}, "text": "Maintenance at 6pm", "dedupKey": "m1"})
    async with http.get(bot_url(app, f"/api/notify/batches/{again['batchId']}"), headers=AUTH) as response:
        duplicate = await response.json()
    assert duplicate == {**duplicate, "requested": 3, "targets": 0, "counts": {}, "finished": True}
    async with http.get(bot_url(app, f"/api/notify/{body['ids'][0]}"), headers=AUTH) as response:
        assert (await response.json())["batchId"] == body["batchId"]


@pytest.mark.parametrize(("batch_id", "status"), [("0" * 32, 404), ("XYZ", 400), ("A" * 32, 400)])
async def test_unknown_or_malformed_batch_ids(start_bot: StartBot, http: aiohttp.ClientSession, batch_id: str,
                                              status: int) -> None:
    app = await start_bot(notify_token=TOKEN)
    async with http.get(bot_url(app, f"/api/notify/batches/{batch_id}"), headers=AUTH) as response:
        assert response.status == status
    async with http.get(bot_url(app, f"/api/notify/batches/{batch_id}")) as response:
        assert response.status == 401


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("replica-7"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


async def test_json_logs_parse_and_name_what_they_are_about(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
    json_log: io.StringIO,
) -> None:
    app = await start_bot(notify_token=TOKEN)
    install = {"type": "installationUpdate", "action": "add", "channelId": "msteams", "serviceUrl": double.url,
               "conversation": {"id": "dm-ada", "conversationType": "personal"}, "from": {"id": "29:ada"},
               "recipient": {"id": "28:bot"}, "channelData": {"tenant": {"id": "t-42"}}}
    async with http.post(bot_url(app), json=install) as response:
        assert response.status == 200
    double.fail_next("bad_argument", conversation_id="dm-ada", ops=["send"])
    await deliver_all(app, fake_clock)  # the welcome fails: a WARNING naming the outbox row
    await notify(http, app, {"to": {"all": True}, "text": "secret sale text"})
    await deliver_all(app, fake_clock)
    app.housekeeping()  # the minutely counters line (a per-process timer in production)

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert lines and all({"time", "level", "logger", "message", "replica"} <= set(line) for line in lines)
    assert all(line["replica"] == "replica-7" for line in lines)
    welcomed = next(line for line in lines if line["message"].startswith("welcomed conversation"))
    assert welcomed["conversationId"] == "dm-ada" and welcomed["tenantId"] == "t-42"
    failed = next(line for line in lines if "not delivered" in line["message"])
    assert failed["level"] == "WARNING" and isinstance(failed["outboxId"], int) and failed["tenantId"] == "t-42"
    counters = next(line for line in lines if line["message"].startswith("delivery:"))
    assert "conversationId" not in counters and "jobId" not in counters
    assert not any("secret sale text" in line["message"] for line in lines), "no message texts in the log"


def test_metrics_objects_are_independent() -> None:
    first, second = Metrics(), Metrics()
    first.message("alert", "sent")
    assert first.delivery_totals()["sent"] == 1 and second.delivery_totals()["sent"] == 0
    first.token_acquired(True)
    first.token_acquired(False)
    text = first.exposition().decode()
    assert 'bot_token_acquisitions_total{result="ok"} 1.0' in text
    assert 'bot_token_acquisitions_total{result="failed"} 1.0' in text


async def test_database_errors_are_counted(start_bot: StartBot, http: aiohttp.ClientSession) -> None:
    app = await start_bot(notify_token=TOKEN)
    await app.db.close()  # every statement now fails
    async with http.get(bot_url(app, "/healthz")) as response:
        assert response.status == 503
    async with http.get(bot_url(app, "/metrics")) as response:
        assert response.status == 200  # the counters are still served; the gauges that need the database are not
        text = await response.text()
    assert 'bot_database_errors_total{where="healthz"} 1.0' in text
    assert 'bot_database_errors_total{where="metrics"} 1.0' in text
