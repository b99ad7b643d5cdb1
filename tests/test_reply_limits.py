"""A turn's replies stay inside Teams' limits, go through the outbox when they cannot go at once, keep their order.

Over HTTP against the connector double. The flood test runs the bot on the real clock against a double that
enforces Teams' windows and 50 requests/s per tenant, as Teams would; the others use the fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.app import BotApplication
from bot.config import Config
from bot.teams.replies import TurnReplies
from state.clock import FakeClock, SystemClock
from state.outbox import REPLY_PRIORITY
from tests.chat import Chat
from tests.conftest import StartBot
from tests.connector_double import ConnectorDouble

GUARD_S = 60.0  # only guards against a hang


@pytest.fixture
async def double() -> AsyncIterator[ConnectorDouble]:
    async with ConnectorDouble() as connector:
        yield connector


def replies_of(app: BotApplication) -> TurnReplies:
    replies = app.teams.adapter.replies
    assert isinstance(replies, TurnReplies)
    return replies


def accepted(double: ConnectorDouble, conversation_id: str) -> list[tuple[str, str]]:
    """(operation, text) of what Teams accepted in a conversation, in order."""
    return [(r.op, r.body.get("text") or "") for r in double.find(conversation_id=conversation_id)
            if r.op in ("send", "reply") and r.status is not None and r.status < 300]


@pytest.mark.bot
async def test_400_users_of_one_tenant_at_once_all_get_their_reply_once_within_the_tenant_budget(
    bot_database_url: str, http: aiohttp.ClientSession,
) -> None:
    users, rps = 400, 50
    bound_s = 1.1 * users / rps + 2
    async with ConnectorDouble(throttling=True, tenant_rps=rps) as double:
        app = BotApplication(Config(database_url=bot_database_url, tenant_rps=rps), SystemClock())
        await app.start(host="127.0.0.1", port=0)
        try:
            chats = [Chat(http, app, double, conversation_id=f"dm-{n}", user_id=f"29:user-{n}")
                     for n in range(users)]
            started = time.monotonic()
            statuses = await asyncio.wait_for(
                asyncio.gather(*(chat.post(chat.activity("message", text="help")) for chat in chats)), GUARD_S)
            answered_s = time.monotonic() - started
            assert set(statuses) == {200}
            await double.wait_for(lambda r: len(double.sent_activities()) >= users, timeout=GUARD_S)
            last = max(r.time for r in double.find() if r.op in ("send", "reply") and (r.status or 0) < 300)
            elapsed = last - started  # the double's clock is time.monotonic too
            per_conversation = Counter(r.conversation_id for r in double.find()
                                       if r.op in ("send", "reply") and (r.status or 0) < 300)
            direct, queued = len(double.find(op="reply", status=201)), len(double.find(op="send", status=201))
            print(f"\n{users} users of one tenant at once, double enforcing {rps} requests/s: every reply "
                  f"delivered {elapsed:.2f} s after the first POST (bound {bound_s:.1f} s; at {rps}/s the last "
                  f"can go no sooner than {users / rps - 1:.1f} s after the first); all HTTP answers within "
                  f"{answered_s:.2f} s; {direct} replies went at once, {queued} through the outbox; "
                  f"{double.throttled_count} 429s")
            assert per_conversation == {f"dm-{n}": 1 for n in range(users)}, "none lost, none doubled"
            assert double.throttled_count == 0, double.throttled
            # No assertion on `elapsed`: speed is bench/turns.py's to measure (shared machines are noisy).
        finally:
            await app.stop()


async def test_a_later_reply_never_overtakes_an_earlier_one_waiting_in_the_outbox(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot()
    chat = Chat(http, app, double)
    await chat.say("help")
    while app.limiter.try_acquire(chat.conversation_id, "t1") == 0.0:  # the conversation's 1 s window is full
        pass
    replies_of(app).wait_s = 0.05
    await chat.say("list")  # no slot within the wait: the reply goes to the outbox
    [(op, _)] = accepted(double, chat.conversation_id)
    assert op == "reply", "only the first reply went; the second waits in the outbox"
    fake_clock.advance(3)  # the 1 s and 2 s windows are free again, but the outbox row is still queued ahead
    replies_of(app).wait_s = GUARD_S  # an upper bound: the reply goes as soon as the row ahead of it is sent
    await chat.say("help")
    await chat.settle()
    texts = chat.texts()
    assert [op for op, _ in accepted(double, chat.conversation_id)] == ["reply", "send", "reply"]
    assert "aren't watching" in texts[1] and texts[0] == texts[2], texts
    rows = await app.outbox.counts()
    assert rows == {"sent": 1}


async def test_once_a_reply_went_to_the_outbox_the_rest_of_the_turn_follows_it_there(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble,
) -> None:
    app = await start_bot()
    chat = Chat(http, app, double)
    await chat.say("watch")  # asks which product
    double.fail_next("service_unavailable", ops=["reply"])
    await chat.say("help")  # mid-topic: help text, then the question again -- two replies in one turn
    await chat.settle()
    sent = accepted(double, chat.conversation_id)
    assert [op for op, _ in sent] == ["reply", "send", "send"], sent
    assert "middle of" in sent[1][1] and "Which product" in sent[2][1]
    assert [r.status for r in double.find(op="reply")] == [201, 503]


async def test_a_throttled_reply_is_retried_after_retry_after(
    start_bot: StartBot, http: aiohttp.ClientSession, double: ConnectorDouble, fake_clock: FakeClock,
) -> None:
    app = await start_bot()
    chat = Chat(http, app, double)
    double.fail_next("throttled", ops=["reply"])  # Retry-After: 1
    await chat.say("help")
    await chat.settle()
    assert accepted(double, chat.conversation_id) == [], "not before Retry-After"
    assert app.worker.counts["throttled"] == 1
    assert app.limiter.conversation_wait(chat.conversation_id) > 0, "the conversation waits too"
    fake_clock.advance(1.1)
    await chat.settle()
    [(op, _)] = accepted(double, chat.conversation_id)
    assert op == "send"
    row = await app.outbox.get(1)  # the only row: the reply
    assert row is not None and (row.category, row.priority, row.status) == ("reply", REPLY_PRIORITY, "sent")
