"""The Bot Connector's keep-alive connections (bot/teams/http1.py) against real servers over real sockets.

The delivery and reply tests drive it through the bot against the connector double; these pin down what a
connection pool must get right: reuse, answers of every framing, servers that close or hang, TLS trust.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from bot.delivery.failures import SendFailure
from bot.teams.connector import ConnectorError, JsonConnector, SharedSession
from bot.teams.http1 import ConnectionLost, ConnectionPool
from bot.teams.sender import classify
from bot.tls import trust_context
from tests.connector_double import ConnectorDouble

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """An aiohttp server on a free port that records the client port of every request it serves."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler, self.ssl_context = handler, ssl_context
        self.peers: list[int] = []
        self.url = ""

    async def __aenter__(self) -> Server:
        async def record(request: web.Request) -> web.StreamResponse:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self.peers.append(peer[1] if peer else 0)
            return await self.handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}/base/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    connections = ConnectionPool()
    yield connections
    await connections.close()


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path, "body": await request.text(),
                              "auth": request.headers.get("Authorization"), "host": request.headers.get("Host")})


async def test_requests_reuse_one_connection_and_carry_path_headers_and_body(pool: ConnectionPool) -> None:
    async with Server(echo) as server:
        for n in range(5):
            response = await pool.request("POST", server.url, f"v3/conversations/c%3A{n}/activities",
                                          {"Authorization": "Bearer t"}, b'{"n": %d}' % n)
            assert response.status == 200
            assert response.headers["content-type"].startswith("application/json")
            assert response.body.startswith(b'{"path": "/base/v3/conversations/c:%d/activities"' % n)
            assert b'"auth": "Bearer t"' in response.body and b'"host": "127.0.0.1:' in response.body
        assert len(set(server.peers)) == 1, "keep-alive: one connection for all five"


async def test_concurrent_requests_get_their_own_answers(pool: ConnectionPool) -> None:
    async with Server(echo) as server:
        answers = await asyncio.gather(*(pool.request("POST", server.url, f"n/{n}", {}, str(n).encode())
                                         for n in range(20)))
        assert [a.body.split(b'"body": "')[1].split(b'"')[0] for a in answers] == [str(n).encode() for n in range(20)]
        assert len(set(server.peers)) <= 20
        await pool.request("GET", server.url, "again", {})
        assert len(set(server.peers)) == len(set(server.peers[:-1])), "an idle connection was reused"


async def test_chunked_and_empty_answers_and_connection_close(pool: ConnectionPool) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=201, reason="Created")
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"id": ', b'"17"}'):
            await response.write(part)
        await response.write_eof()
        return response

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=202, headers={"Connection": "close"})

    async with Server(chunked) as server:
        answer = await pool.request("POST", server.url, "x", {})
        assert (answer.status, answer.reason, answer.body) == (201, "Created", b'{"id": "17"}')
    async with Server(empty) as server:
        for _ in range(2):
            answer = await pool.request("POST", server.url, "x", {})
            assert (answer.status, answer.body) == (202, b"")
        assert len(set(server.peers)) == 2, "a connection the server closes is not reused"


async def test_a_server_that_drops_the_connection_or_is_not_there_is_a_retryable_failure(
    pool: ConnectionPool,
) -> None:
    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError

    async with Server(drop) as server:
        with pytest.raises(ConnectionLost) as lost:
            await pool.request("POST", server.url, "x", {})
        url = server.url
    assert classify(lost.value).action == "retry"
    with pytest.raises(ConnectionLost) as refused:
        await pool.request("POST", url, "x", {})  # the server is gone: connection refused
    assert classify(refused.value).action == "retry"


async def test_a_request_that_times_out_is_retried_and_its_connection_is_not_reused() -> None:
    async with ConnectorDouble() as double:
        session = SharedSession()
        connector = JsonConnector(session, timeout_s=0.2)
        double.hold_next(ops=["send"])
        with pytest.raises(TimeoutError) as timed_out:
            await connector.send(double.url, "c1", {"type": "message", "text": "held"})
        assert classify(timed_out.value).action == "retry"
        double.release_held()
        answer = await connector.send(double.url, "c1", {"type": "message", "text": "next"})
        assert answer["id"] and [a["text"] for a in double.sent_activities("c1")] == ["held", "next"]
        await session.close()


async def test_teams_errors_keep_their_status_code_and_retry_after() -> None:
    async with ConnectorDouble() as double:
        session = SharedSession()
        connector = JsonConnector(session)
        double.fail_next("throttled")
        with pytest.raises(ConnectorError) as throttled:
            await connector.send(double.url, "c1", {"type": "message", "text": "x"})
        assert classify(throttled.value) == SendFailure("retry", 429, "Throttled", "Too many requests (scripted)", 1.0)
        double.fail_next("blocked_by_user")
        with pytest.raises(ConnectorError) as blocked:
            await connector.send(double.url, "c1", {"type": "message", "text": "x"})
        assert (classify(blocked.value).action, blocked.value.code) == ("gone", "ConversationBlockedByUser")
        await session.close()


async def test_tls_is_verified_against_the_bots_trust(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with Server(echo, server_context) as server:
        trusting = ConnectionPool(trust_context([str(ca_file)]))
        answer = await trusting.request("POST", server.url, "x", {}, b"{}")
        assert answer.status == 200
        await trusting.close()
        stranger = ConnectionPool(trust_context())
        with pytest.raises(ConnectionLost, match="CERTIFICATE_VERIFY_FAILED"):
            await stranger.request("POST", server.url, "x", {}, b"{}")
        await stranger.close()
