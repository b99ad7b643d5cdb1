"""The Bot Connector client reads every shape of answer right, and survives hostile ones.

A raw-socket server (tests/raw_http.py) answers with exact bytes: interim 1xx answers before the real one, a body
ended by closing the connection, chunked bodies, IPv6 hosts, endless headers, oversized and trickling bodies.
Through the delivery worker, a send is recorded as sent only with the answer that belongs to it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.app import BotApplication
from bot.teams.connector import JsonConnector, SharedSession
from bot.teams.http1 import ConnectionLost, ConnectionPool, ResponseTooLarge
from bot.teams.sender import classify
from tests.conftest import StartBot, bot_url
from tests.raw_http import RawRequest, RawServer, response

JSON = {"Content-Type": "application/json"}


def answer(body: dict[str, Any], status: int = 201) -> bytes:
    return response(status, json.dumps(body).encode(), reason="Created", headers=JSON)


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    connections = ConnectionPool(max_head_bytes=64 * 1024, max_body_bytes=64 * 1024)
    yield connections
    await connections.close()


async def test_interim_answers_are_skipped_and_the_real_one_belongs_to_its_request(pool: ConnectionPool) -> None:
    async with RawServer() as raw:
        raw.script = [b"HTTP/1.1 100 Continue\r\n\r\n" + answer({"id": "first"}),
                      b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
                      b"HTTP/1.1 102 Processing\r\n\r\n" + answer({"id": "second"}, 200)]
        one = await pool.request("POST", raw.url, "v3/conversations/a/activities", {}, b"{}")
        two = await pool.request("POST", raw.url, "v3/conversations/a/activities", {}, b"{}")
        three = await pool.request("POST", raw.url, "v3/conversations/a/activities", {}, b"{}")
    assert (one.status, json.loads(one.body)) == (201, {"id": "first"})
    assert (two.status, json.loads(two.body)) == (200, {"id": "second"})
    assert json.loads(three.body)["id"].startswith("raw-")
    assert "link" not in two.headers, "an interim answer's headers are not the final answer's"
    assert raw.connections == 1, "interim answers leave the connection usable"


async def test_a_body_ended_by_closing_is_read_to_the_end(pool: ConnectionPool) -> None:
    async def close_delimited(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\r\n{"id": ')
        await writer.drain()
        writer.write(b'"until-close"}')
        return False  # close: that ends the body

    async with RawServer() as raw:
        raw.script = [close_delimited]
        first = await pool.request("POST", raw.url, "x", {}, b"{}")
        second = await pool.request("POST", raw.url, "x", {}, b"{}")
    assert (first.status, json.loads(first.body)) == (201, {"id": "until-close"})
    assert second.status == 200 and raw.connections == 2, "a close-delimited answer's connection is not reused"


async def test_chunked_bodies_and_trailers(pool: ConnectionPool) -> None:
    chunked = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
               b"5\r\n{\"id\"\r\n3;ext=1\r\n: \"\r\n4\r\nabc\"\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n")
    async with RawServer() as raw:
        raw.script = [chunked, chunked]
        for _ in range(2):
            got = await pool.request("POST", raw.url, "x", {}, b"{}")
            assert (got.status, json.loads(got.body)) == (201, {"id": "abc"})
    assert raw.connections == 1


async def test_endless_headers_are_cut_off_and_the_connection_closed(pool: ConnectionPool) -> None:
    async def endless(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(10_000):  # ~300 KiB of headers, never ending the head
            writer.write(b"X-Filler-%05d: %s\r\n" % (n, b"x" * 16))
            if n % 500 == 0:
                try:
                    await writer.drain()
                except ConnectionError:
                    return False
        return False

    async with RawServer() as raw:
        raw.script = [endless]
        with pytest.raises(ResponseTooLarge) as too_large:
            await pool.request("POST", raw.url, "x", {}, b"{}")
        assert classify(too_large.value).action == "retry"
        healthy = await pool.request("POST", raw.url, "x", {}, b"{}")
    assert healthy.status == 200 and raw.connections == 2


async def test_an_oversized_body_is_refused_and_the_connection_closed(pool: ConnectionPool) -> None:
    big = response(200, b"x" * (200 * 1024), headers=JSON)
    async with RawServer() as raw:
        raw.script = [big, response(200, b"x" * (200 * 1024), headers={"Transfer-Encoding": "identity"},
                                    length=False)]
        with pytest.raises(ResponseTooLarge):
            await pool.request("POST", raw.url, "x", {}, b"{}")
        with pytest.raises(ResponseTooLarge):
            await pool.request("POST", raw.url, "x", {}, b"{}")
        assert (await pool.request("POST", raw.url, "x", {}, b"{}")).status == 200
    assert raw.connections == 3


@pytest.mark.parametrize("garbage", [b"HTTP/1.1 2OO OK\r\n\r\n", b"\x00\x01\x02\r\n\r\n",
                                     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
async def test_unreadable_answers_are_a_retryable_failure(pool: ConnectionPool, garbage: bytes) -> None:
    async with RawServer() as raw:
        raw.script = [garbage]
        with pytest.raises(ConnectionLost) as lost:
            await pool.request("POST", raw.url, "x", {}, b"{}")
        assert classify(lost.value).action == "retry"
        assert (await pool.request("POST", raw.url, "x", {}, b"{}")).status == 200


async def test_a_body_that_trickles_times_out_and_the_send_is_retried() -> None:
    stalled = asyncio.Event()

    async def trickle(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        await stalled.wait()  # never set: the rest never comes
        return False

    async with RawServer() as raw:
        raw.script = [trickle]
        session = SharedSession()
        try:
            connector = JsonConnector(session, timeout_s=0.3)
            with pytest.raises(TimeoutError) as timed_out:
                await connector.send(raw.url, "a:1", {"type": "message", "text": "hi"})
            assert classify(timed_out.value).action == "retry"
            assert (await connector.send(raw.url, "a:1", {"type": "message", "text": "again"}))["id"]
        finally:
            await session.close()
    assert raw.connections == 2, "the stalled connection was closed, not reused"


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback on this machine")
async def test_an_ipv6_host_is_bracketed(pool: ConnectionPool) -> None:
    async with RawServer(host="::1") as raw:
        assert raw.url.startswith("http://[::1]:")
        got = await pool.request("POST", raw.url, "v3/x", {}, b"{}")
    assert got.status == 200
    port = raw.url.rsplit(":", 1)[1].strip("/")
    assert raw.requests[0].headers["host"] == f"[::1]:{port}"


async def test_connection_slots_are_per_origin() -> None:
    """One origin holding all its slots (a slow host) does not stop another's requests."""
    release = asyncio.Event()

    async def hold(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(answer({"id": "late"}))
        return True

    pool = ConnectionPool(max_connections=1)
    try:
        async with RawServer() as slow, RawServer() as fast:
            slow.script = [hold]
            held = asyncio.create_task(pool.request("POST", slow.url, "x", {}, b"{}"))
            await slow.arrived.wait()
            got = await asyncio.wait_for(pool.request("POST", fast.url, "x", {}, b"{}"), 10)
            assert got.status == 200 and not held.done()
            release.set()
            assert (await held).status == 201
    finally:
        await pool.close()


# ---- through the bot: recorded as sent only with the answer that belongs to the send ---------------------------


async def _register(http: aiohttp.ClientSession, app: BotApplication, raw: RawServer, conversation: str) -> None:
    activity = {"type": "conversationUpdate", "id": f"cu-{conversation}", "channelId": "msteams",
                "serviceUrl": raw.url, "conversation": {"id": conversation, "conversationType": "personal"},
                "from": {"id": "29:ada"}, "recipient": {"id": "28:bot"}, "channelData": {"tenant": {"id": "t1"}}}
    async with http.post(bot_url(app), json=activity) as r:
        assert r.status == 200


async def _settle(app: BotApplication) -> None:
    for _ in range(3):
        app.worker.pump()
        await app.worker.idle()
    await app.worker.flush()


async def test_the_worker_records_each_send_with_its_own_id_whatever_the_framing(
    start_bot: StartBot, http: aiohttp.ClientSession,
) -> None:
    app = await start_bot(notify_token="n")
    async with RawServer() as raw:
        await _register(http, app, raw, "a:framing")
        before = len(raw.requests)
        chunked = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"e\r\n{\"id\": \"three\"\r\n1\r\n}\r\n0\r\n\r\n")

        async def close_delimited(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
            writer.write(b'HTTP/1.1 201 Created\r\n\r\n{"id": "two"}')
            return False

        raw.script = [b"HTTP/1.1 100 Continue\r\n\r\n" + answer({"id": "one"}), close_delimited, chunked]
        ids = []
        for text in ("first", "second", "third"):
            async with http.post(bot_url(app, "/api/notify"), headers={"Authorization": "Bearer n"},
                                 json={"to": {"conversations": ["a:framing"]}, "text": text}) as r:
                assert r.status == 202
                ids += (await r.json())["ids"]
            await _settle(app)
        rows = [await app.outbox.get(row_id) for row_id in ids]
        assert [(r.status, r.activity_id, r.attempts) for r in rows if r] == [
            ("sent", "one", 1), ("sent", "two", 1), ("sent", "three", 1)]
        assert [json.loads(r.body)["text"] for r in raw.requests[before:]] == ["first", "second", "third"], \
            "each message went once: none retried, none doubled"
