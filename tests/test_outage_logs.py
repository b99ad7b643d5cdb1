"""A 15-second database outage as the operator sees it, with the bot as a real process (`main.py`, JSON logs):

- during it, turns and notify calls are answered 503 with Retry-After (never 2xx for work not done), /livez 200;
- its log is a handful of lines: one WARNING naming the reason, one INFO when it is back (with how long it was
  gone), no traceback at INFO or above, every line one JSON object;
- right after the return a notify is delivered (within 5 s: every part works again), and a turn refused during
  the outage, sent again, is answered once.

The outage lasts 15 s of real time because that is the scenario (an outage's length), not a timing assertion.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.bot_process import start_bot
from tests.connector_double import ConnectorDouble
from tests.outages import BUSY_TIMEOUT_S, Outage, outage_fixture  # noqa: F401 - the `outage` fixture

TOKEN = "outage-logs"
OUTAGE_S = 15.0
RECOVERY_S = 5.0


def activity(double: ConnectorDouble, conversation_id: str, activity_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "message", "id": activity_id, "text": text, "channelId": "msteams", "serviceUrl": double.url,
        "conversation": {"id": conversation_id, "conversationType": "personal"},
        "from": {"id": f"29:{conversation_id}", "name": "Ada"}, "recipient": {"id": "28:bot", "name": "Price Watch"},
        "channelData": {"tenant": {"id": "t1"}},
    }


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], token: bool = False) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"} if token else None
    async with http.post(url, json=body, headers=headers) as response:
        await response.read()
        if response.status == 503:
            assert response.headers.get("Retry-After"), "a 503 says when to come back"
        return response.status


async def test_a_15_s_outage_is_a_handful_of_log_lines_and_the_bot_works_again_right_after(
    outage: Outage, tmp_path: Path
) -> None:
    async with ConnectorDouble() as double, aiohttp.ClientSession() as http:
        bot = await start_bot(tmp_path, outage.url, "outage", TOKEN, LOG_FORMAT="json",
                              DATABASE_BUSY_TIMEOUT=str(BUSY_TIMEOUT_S), LEASE_SECONDS="6")
        try:
            assert await post(http, f"{bot.url}/api/messages", activity(double, "dm-known", "k1", "help")) == 200
            await double.wait_for(lambda r: r.conversation_id == "dm-known", timeout=10)
            before = len(bot.log.read_text().splitlines())
            loop = asyncio.get_running_loop()
            await outage.down()
            statuses: list[int] = []
            refused: list[dict[str, Any]] = []
            try:
                ends = loop.time() + OUTAGE_S
                n = 0
                while loop.time() < ends:  # the load an outage meets: turns, notify calls, health probes
                    n += 1
                    turn = activity(double, f"dm-new-{n}", f"new-{n}", "help")
                    statuses.append(await post(http, f"{bot.url}/api/messages", turn))
                    if statuses[-1] == 503:
                        refused.append(turn)
                    statuses.append(await post(http, f"{bot.url}/api/notify", {
                        "to": {"conversations": ["dm-known"]}, "text": f"during {n}"}, token=True))
                    async with http.get(f"{bot.url}/healthz") as response:
                        statuses.append(response.status)
                    async with http.get(f"{bot.url}/livez") as response:
                        assert response.status == 200
                    await asyncio.sleep(0.5)  # pacing the load, not waiting for an outcome
            finally:
                await outage.up()
            back = loop.time()
            assert refused and set(statuses) <= {503}, f"never a 2xx for work not done: {sorted(set(statuses))}"

            while await post(http, f"{bot.url}/api/notify", {  # the first call after the return may still meet it
                    "to": {"conversations": ["dm-known"]}, "text": "right after"}, token=True) != 202:
                assert loop.time() - back < RECOVERY_S, "notify accepted again within 5 s"
                await asyncio.sleep(0.1)
            await double.wait_for(lambda r: r.op == "send" and "right after" in str(r.body.get("text")),
                                  timeout=max(0.1, RECOVERY_S - (loop.time() - back)))
            print(f"notify delivered {loop.time() - back:.1f} s after the database's return")

            again = refused[0]  # Teams sends the refused activity again: answered once
            assert await post(http, f"{bot.url}/api/messages", again) == 200
            assert await post(http, f"{bot.url}/api/messages", again) == 200
            await double.wait_for(lambda r: r.conversation_id == again["conversation"]["id"], timeout=10)
            assert await bot.stop() == 0, bot.tail()
            answers = [r for r in double.find(conversation_id=again["conversation"]["id"])
                       if r.status and r.status < 300]
            assert len(answers) == 1, "the re-sent activity is answered once"
        except BaseException:
            print(bot.tail(20000))
            raise
        finally:
            await bot.kill()
    lines = bot.log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    during = records[before:]
    loud = [r for r in during if r["level"] in ("WARNING", "ERROR", "CRITICAL")]
    print(f"{len(during)} log line(s) from the outage to the stop, {len(loud)} WARNING or above:")
    for r in during:
        print(f"  {r['level']:8} {r['logger']}: {r['message'][:160]}")
    assert [r["message"] for r in during if r["message"].startswith("database unavailable")] == \
        [next(r["message"] for r in during if r["message"].startswith("database unavailable"))], "one WARNING"
    assert sum(r["message"].startswith("database available again after") for r in during) == 1, "one INFO"
    assert not [r for r in during if "exception" in r], "no traceback at INFO or above"
    assert len(loud) <= 3 and len(during) <= 12, "a handful of lines"
