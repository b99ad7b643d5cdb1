"""Price watching and analyses end to end over HTTP: push prices, alerts, buttons, progress, results."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from scheduler.jobs import JobState
from state.clock import FakeClock
from state.model import Condition, UserRef
from tests.chat import Chat
from tests.conftest import StartBot, bot_url
from tests.connector_double import ConnectorDouble

TOKEN = "tok"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as d:
        yield d


@pytest.fixture
async def chat(start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble) -> Chat:
    app = await start_bot(notify_token=TOKEN, prices_token=TOKEN, price_source="none", analyze_seconds=30.0,
                          progress_delays=(5.0, 15.0), alert_coalesce_seconds=2.0)
    chat = Chat(http, app, double)
    await chat.install()
    await chat.settle()
    return chat


async def push(chat: Chat, price: Any, product: str = "gadget", **extra: Any) -> tuple[int, dict[str, Any]]:
    body = {"product": product, "price": price, "currency": "USD", "source": "Acme Store", **extra}
    async with chat.http.post(bot_url(chat.app, "/api/prices"), json=body, headers=AUTH) as response:
        return response.status, await response.json()


async def tick(chat: Chat, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    await chat.app.scheduler.run_due()
    await chat.settle()


def alert_cards(chat: Chat) -> list[dict[str, Any]]:
    return [c for c in chat.cards() if c["body"][0].get("text") == "Price alert"]


async def test_alert_only_when_the_condition_holds_and_once_per_price(chat: Chat, fake_clock: FakeClock) -> None:
    await chat.say("watch gadget below 10")
    assert (await push(chat, 12))[0] == 202
    await tick(chat, fake_clock, 3)
    assert alert_cards(chat) == []
    await push(chat, "9.50", url="https://shop.example/gadget")
    await tick(chat, fake_clock, 3)
    [card] = alert_cards(chat)
    text = " ".join(chat.texts())
    assert "[gadget](https://shop.example/gadget): 12.00 → 9.50 USD (\u221220.8%)" in text and "Acme Store" in text
    titles = [a["title"] for a in card["actions"]]
    assert titles == ["View", "Snooze 1 hour", "Snooze 1 day", "Stop watching", "Mute notifications"]
    await push(chat, "9.50")
    await tick(chat, fake_clock, 3)
    assert len(alert_cards(chat)) == 1, "never twice for the same price"


async def test_rapid_moves_coalesce_into_one_alert_with_the_latest_price(chat: Chat, fake_clock: FakeClock) -> None:
    await chat.say("watch gadget below 10")
    for price in ("9.9", "9.5", "9.1"):
        await push(chat, price)
    await tick(chat, fake_clock, 3)
    [_] = alert_cards(chat)
    text = " ".join(chat.texts())
    assert "gadget: 9.90 → 9.10 USD (\u22128.1%)" in text and "9.50" not in text, "from the burst's first price"


async def test_stop_watching_button_updates_the_card_in_place(chat: Chat, fake_clock: FakeClock,
                                                              double: ConnectorDouble) -> None:
    await chat.say("watch gadget below 10")
    await push(chat, 9)
    await tick(chat, fake_clock, 3)
    [card] = alert_cards(chat)
    stop = next(a for a in card["actions"] if a["title"] == "Stop watching")
    [sent] = [r for r in double.find(op="send") if "Price alert" in str(r.body)]
    activity_id = sent.response["id"]
    await chat.post(chat.activity("message", value=stop["data"], replyToId=activity_id))
    updated = double.activity(chat.conversation_id, activity_id)
    assert updated is not None and "Stopped watching gadget" in str(updated)
    await chat.say("list")
    assert "aren't watching any prices" in chat.texts()[-1]


async def test_snooze_silences_a_watch_for_a_while(chat: Chat, fake_clock: FakeClock) -> None:
    await chat.say("watch gadget any change")
    await push(chat, 10)
    await tick(chat, fake_clock, 3)
    await push(chat, 11)
    await tick(chat, fake_clock, 3)
    [card] = alert_cards(chat)
    snooze = next(a for a in card["actions"] if a["title"] == "Snooze 1 hour")
    await chat.press(snooze["data"])
    await push(chat, 12)
    await tick(chat, fake_clock, 3)
    assert len(alert_cards(chat)) == 1
    await tick(chat, fake_clock, 3600)
    await push(chat, 13)
    await tick(chat, fake_clock, 3)
    assert len(alert_cards(chat)) == 2


async def test_push_api_validates_and_requires_the_token(chat: Chat) -> None:
    assert (await push(chat, -1))[1]["error"]["field"] == "price"
    async with chat.http.post(bot_url(chat.app, "/api/prices"), json={"product": "x"}) as response:
        assert response.status == 401


@pytest.mark.parametrize(("price", "extra", "field"), [
    ("1e-999999999999", {}, "price"),  # regression: a positive Decimal far below a cent was recorded
    ("1_000", {}, "price"), ("\uff19", {}, "price"),  # Decimal reads underscores and fullwidth digits
    (True, {}, "price"), ([5], {}, "price"), ({"amount": 5}, {}, "price"), ("9" * 41, {}, "price"),
    (5, {"currency": ["USD"]}, "currency"), (5, {"url": "javascript:alert(1)"}, "url"),
    (5, {"url": "http://[::1"}, "url"), (5, {"source": 7}, "source"), (5, {"extra": 1}, "extra"),
])
async def test_hostile_price_pushes_are_refused_and_not_recorded(chat: Chat, price: Any, extra: dict[str, Any],
                                                                 field: str) -> None:
    status, body = await push(chat, price, **extra)
    assert status == 400 and body["error"]["field"] == field, body
    assert await chat.app.prices.latest("gadget") is None


async def test_analysis_acknowledges_updates_in_place_and_delivers(chat: Chat, fake_clock: FakeClock,
                                                                   double: ConnectorDouble) -> None:
    """At most two messages: the acknowledgement (updated in place with progress, then "done"), and the result."""
    for price in (10, 12, 11):
        await push(chat, price)
    before = len(double.find(conversation_id=chat.conversation_id, op="send"))
    await chat.say("analyze gadget")
    await chat.settle()
    assert "Working on it" in chat.texts()[-1]
    [ack] = [r for r in double.find(conversation_id=chat.conversation_id, op="send") if "Working on it" in str(r.body)]
    await chat.say("status")
    assert "gadget" in chat.texts()[-1]
    await tick(chat, fake_clock, 5)
    await tick(chat, fake_clock, 10)
    updates = [r for r in double.find(conversation_id=chat.conversation_id, op="update")]
    assert [u.activity_id for u in updates] == [ack.response["id"]] * 2, "progress updates the acknowledgement"
    assert all("Still working" in str(u.body) for u in updates)
    await chat.say("help")  # the conversation goes on meanwhile
    await tick(chat, fake_clock, 15)
    result = [t for t in chat.texts() if "Analysis of gadget is ready" in t]
    assert len(result) == 1 and "10.00 / 12.00 USD" in result[0] and "rising" in result[0]
    final = double.activity(chat.conversation_id, ack.response["id"])
    assert final is not None and "Done" in str(final)
    sends = [r for r in double.find(conversation_id=chat.conversation_id, op="send")][before:]
    ours = [r for r in sends if "gadget" in str(r.body) and "Analyses still running" not in str(r.body)]
    assert len(ours) == 2, f"the analysis sent {len(ours)} messages, not 2: {[str(r.body)[:80] for r in ours]}"


async def test_cancel_analysis(chat: Chat, fake_clock: FakeClock) -> None:
    await chat.say("analyze gizmo")
    await chat.say("cancel gizmo")
    await tick(chat, fake_clock, 60)
    assert not any("Analysis of **gizmo**" in t or "Analysis of gizmo" in t for t in chat.texts())
    assert "Stopped the analysis of **gizmo**" in " ".join(chat.texts())
    await chat.say("status")
    assert "gizmo" not in chat.texts()[-1]


async def test_analysis_result_waits_for_the_end_of_a_topic(chat: Chat, fake_clock: FakeClock) -> None:
    await chat.say("analyze gadget")
    await chat.say("watch")
    await tick(chat, fake_clock, 31)
    assert not any("Analysis of **gadget**" in t for t in chat.texts())
    await chat.say("cancel")
    await chat.settle()
    assert sum("Analysis of **gadget** finished" in t for t in chat.texts()) == 1


async def test_analysis_resumes_after_restart(start_bot: StartBot, http: aiohttp.ClientSession,
                                              double: ConnectorDouble, fake_clock: FakeClock) -> None:
    app = await start_bot(price_source="none", analyze_seconds=30.0)
    chat = Chat(http, app, double)
    await chat.say("analyze gadget")
    await app.stop()
    fake_clock.advance(40)
    again: BotApplication = await start_bot(price_source="none", analyze_seconds=30.0)
    chat = Chat(http, again, double)
    await again.scheduler.run_due()
    await chat.settle()
    assert sum("Analysis of **gadget** finished" in t for t in chat.texts()) == 1


async def test_action_execute_on_an_alert_answers_with_the_replacement_card(chat: Chat, fake_clock: FakeClock) -> None:
    await chat.say("watch gadget below 10")
    await push(chat, 9)
    await tick(chat, fake_clock, 3)
    [card] = alert_cards(chat)
    stop = next(a for a in card["actions"] if a["title"] == "Stop watching")
    invoke = chat.activity("invoke", name="adaptiveCard/action",
                           value={"action": {"type": "Action.Execute", "verb": "alert", "data": stop["data"]},
                                  "trigger": "manual"})
    url = f"http://127.0.0.1:{chat.app.port}/api/messages"
    async with chat.http.post(url, json=invoke) as response:
        assert response.status == 200
        body = await response.json()
    assert body["statusCode"] == 200 and body["type"] == "application/vnd.microsoft.card.adaptive"
    assert "Stopped watching gadget" in str(body["value"])
    assert await chat.app.watcher.list("29:ada") == []


async def test_only_the_owner_can_stop_or_snooze_a_watch(chat: Chat, fake_clock: FakeClock) -> None:
    await chat.say("watch gadget below 10")
    await push(chat, 9)
    await tick(chat, fake_clock, 3)
    [card] = alert_cards(chat)
    stop = next(a for a in card["actions"] if a["title"] == "Stop watching")
    snooze = next(a for a in card["actions"] if a["title"] == "Snooze 1 day")
    mallory = Chat(chat.http, chat.app, chat.double, conversation_id=chat.conversation_id, user_id="29:mallory")
    await mallory.press(stop["data"])
    await mallory.press(snooze["data"])
    assert "someone else's watch" in chat.texts()[-1]
    assert [w.product for w in await chat.app.watcher.list("29:ada")] == ["gadget"]
    watch = (await chat.app.prices.watches_on("gadget"))[0]
    assert watch.snoozed_until is None
    await mallory.press({**stop["data"], "watchId": None})  # a forged button: an answer, not a failed turn
    assert "out of date" in chat.texts()[-1]


# ---- no lost alerts (issue 12) -------------------------------------------------------------------------------


async def test_an_alert_that_could_not_be_queued_is_not_marked_sent_and_comes_on_the_retry(
    chat: Chat, fake_clock: FakeClock
) -> None:
    await chat.say("watch gadget below 10")
    proactive = chat.app.proactive
    real, calls = proactive.enqueue, []

    async def failing_once(items: Any, **kwargs: Any) -> Any:
        calls.append(items)
        if len(calls) == 1:
            raise ConnectionError("the database went away")
        return await real(items, **kwargs)

    proactive.enqueue = failing_once  # type: ignore[method-assign]
    await push(chat, "9.50")
    await tick(chat, fake_clock, 3)  # the evaluation fails
    assert alert_cards(chat) == []
    [watch] = await chat.app.prices.watches_on("gadget")
    assert watch.last_alert_price is None and watch.alerts_sent == 0, "not marked alerted without the alert"
    await tick(chat, fake_clock, 15)  # the scheduler's retry (10 s backoff)
    assert len(alert_cards(chat)) == 1 and len(calls) == 2
    [watch] = await chat.app.prices.watches_on("gadget")
    assert (watch.last_alert_price, watch.alerts_sent) == (Decimal("9.50"), 1)


async def test_an_any_change_watch_alerts_again_when_an_earlier_price_comes_back(
    chat: Chat, fake_clock: FakeClock
) -> None:
    await push(chat, 10)
    await tick(chat, fake_clock, 3)
    await chat.say("watch gadget any change")
    for price in (11, 10, 11):
        await push(chat, price)
        await tick(chat, fake_clock, 3)
    texts = [t for t in chat.texts() if "Price alert" in t]
    assert len(texts) == 3, texts
    assert "10.00 → 11.00" in texts[0] and "11.00 → 10.00" in texts[1] and "10.00 → 11.00" in texts[2]


async def test_a_price_arriving_while_its_evaluation_runs_is_evaluated_again(
    chat: Chat, fake_clock: FakeClock
) -> None:
    """"Already scheduled" means pending: a running (or dead) evaluation does not swallow a new price."""
    await chat.say("watch gadget below 10")
    app = chat.app
    await push(chat, 12)
    fake_clock.advance(3)
    [job] = [j for j in await app.scheduler.list_jobs("evaluate:")]
    claimed = await app.scheduler._store.claim([job.id], fake_clock.now(), fake_clock.now())  # running elsewhere
    assert claimed and (await app.scheduler.get(key=job.key)).state is JobState.RUNNING  # type: ignore[union-attr]
    await push(chat, "9.50")
    fresh = await app.scheduler.get(key=job.key)
    assert fresh is not None and fresh.state is JobState.PENDING and fresh.id != job.id
    await tick(chat, fake_clock, 3)
    assert len(alert_cards(chat)) == 1


async def test_dead_poll_and_evaluation_jobs_are_rearmed_at_start_up(
    start_bot: StartBot, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start_bot(price_source="demo")
    await app.watcher.add(UserRef("29:ada"), "c1", "gadget", Condition("any"))
    await app.scheduler.schedule_in(5, "prices.evaluate", {"product": "gadget"}, key="evaluate:gadget")
    for key in ("poll:gadget", "evaluate:gadget"):
        job = await app.scheduler.get(key=key)
        assert job is not None
        await app.db.execute("UPDATE scheduled_jobs SET state = 'dead', last_error = 'boom' WHERE id = ?", (job.id,))
    await app.stop()
    again = await start_bot(price_source="demo")
    for key in ("poll:gadget", "evaluate:gadget"):
        job = await again.scheduler.get(key=key)  # None: re-armed due now and already run (a dead one stays)
        assert job is None or (job.state is not JobState.DEAD and job.attempts <= 1), key  # armed afresh
    assert "re-arming the dead poll of gadget" in caplog.text
    assert "re-arming the dead evaluation of gadget" in caplog.text


async def test_a_button_inside_a_digest_answers_in_a_new_message_and_leaves_the_digest(
    chat: Chat, fake_clock: FakeClock, double: ConnectorDouble
) -> None:
    await chat.say("watch gadget below 10")
    await chat.say("watch gizmo below 10")
    await chat.say("watch")  # mid-topic: the alerts wait and come as one digest
    await push(chat, 9)
    await push(chat, 8, product="gizmo")
    await tick(chat, fake_clock, 3)
    await chat.say("cancel")
    await chat.settle()
    [sent] = [r for r in double.find(op="send") if "While we were talking" in str(r.body)]
    digest_id = sent.response["id"]
    buttons = [a for element in sent.body["attachments"][0]["content"]["body"] for item in element.get("items", [])
               if item.get("type") == "ActionSet" for a in item["actions"]]
    ids = {p: str((await chat.app.prices.watches_on(p))[0].id) for p in ("gadget", "gizmo")}
    stop_gadget = next(a for a in buttons if a["title"] == "Stop watching" and a["data"]["watchId"] == ids["gadget"])
    assert stop_gadget["data"]["inDigest"] is True
    await chat.post(chat.activity("message", value=stop_gadget["data"], replyToId=digest_id))
    digest_now = double.activity(chat.conversation_id, digest_id)
    assert digest_now is not None and "gizmo" in str(digest_now), "the digest keeps its other updates"
    assert "Stopped watching gadget" in chat.texts()[-1]
    invoke = chat.activity("invoke", name="adaptiveCard/action",
                           value={"action": {"type": "Action.Execute", "verb": "alert", "data": {
                               **next(a for a in buttons if a["data"]["watchId"] == ids["gizmo"]
                                      and a["title"] == "Stop watching")["data"]}}})
    async with chat.http.post(bot_url(chat.app), json=invoke) as response:
        body = await response.json()
    assert body["type"] == "application/vnd.microsoft.activity.message" and "gizmo" in body["value"]


async def test_an_analysis_starts_whole_or_not_at_all(chat: Chat, fake_clock: FakeClock) -> None:
    """The row, its jobs and its acknowledgement commit together: a failure half-way leaves nothing behind."""
    store = chat.app.scheduler._store
    real_insert, calls = store.insert, []

    async def failing_once(job: Any, conn: Any = None) -> None:
        calls.append(job.handler)
        if len(calls) == 1:
            raise OSError("disk full")
        await real_insert(job, conn)

    store.insert = failing_once  # type: ignore[method-assign]
    await chat.say("analyze gadget")
    assert "something went wrong" in chat.texts()[-1].lower()
    assert await chat.app.analyses.running("29:ada") == [], "no analysis without its jobs"
    assert [j for j in await chat.app.scheduler.list_jobs("analysis") if j.payload] == []
    await chat.say("analyze gadget")  # not refused as "already analysing"
    await chat.settle()
    assert "Working on it" in chat.texts()[-1]
    await tick(chat, fake_clock, 31)
    assert any("Analysis of" in t and "gadget" in t for t in chat.texts()), chat.texts()[-3:]


# ---- owners only, the card from our own rows (issue 20) -------------------------------------------------------


async def test_a_forged_button_value_never_reaches_the_card(chat: Chat, fake_clock: FakeClock,
                                                            double: ConnectorDouble) -> None:
    await chat.say("watch gadget below 10")
    await push(chat, 9)
    await tick(chat, fake_clock, 3)
    [card] = alert_cards(chat)
    stop = next(a for a in card["actions"] if a["title"] == "Stop watching")
    assert set(stop["data"]) == {"command", "action", "watchId"}, "the button names the watch, nothing to show"
    [sent] = [r for r in double.find(op="send") if "Price alert" in str(r.body)]
    forged = {**stop["data"], "product": "**pwned** [click](https://evil.example/)", "args": "<b>x</b>"}
    await chat.post(chat.activity("message", value=forged, replyToId=sent.response["id"]))
    updated = double.activity(chat.conversation_id, sent.response["id"])
    assert updated is not None and "Price alert for gadget" in str(updated)
    assert "Stopped watching gadget" in str(updated)
    assert "pwned" not in str(updated) and "evil" not in str(updated)


async def test_a_product_name_is_escaped_in_the_alert_and_its_answers(chat: Chat, fake_clock: FakeClock,
                                                                      double: ConnectorDouble) -> None:
    await chat.say("watch *g_[x]* below 10")
    await push(chat, 9, product="*g_[x]*")
    await tick(chat, fake_clock, 3)
    [card] = alert_cards(chat)
    texts = [b.get("text", "") for b in card["body"]] + [f["value"] for b in card["body"] for f in b.get("facts", [])]
    assert any("\\*g\\_\\[x\\]\\* is now 9.00" in t for t in texts), texts
    assert not any("*g_[x]*" in t for t in texts), "no raw markdown from a user reaches the card"
    stop = next(a for a in card["actions"] if a["title"] == "Stop watching")
    [sent] = [r for r in double.find(op="send") if "Price alert" in str(r.body)]
    await chat.post(chat.activity("message", value=stop["data"], replyToId=sent.response["id"]))
    updated = double.activity(chat.conversation_id, sent.response["id"])
    assert updated is not None and "Stopped watching \\\\*g\\\\_\\\\[x\\\\]\\\\*" in json.dumps(updated)
