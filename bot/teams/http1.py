"""Keep-alive HTTP/1.1 to the Bot Connector for the hot paths (turn replies, proactive sends), at a third of the CPU.

Measured on the benchmark machine (docs/architecture.md, "Turn cost and send cost"): one POST through an
aiohttp `ClientSession` costs about 0.25 ms of CPU, most of it the session's per-request machinery (URL and
header objects, cookie and proxy handling, tracing hooks, timers); the same request written on an asyncio
protocol and parsed by httptools (the C parser uvicorn uses) about 0.09 ms. The Bot Connector's calls need none of
that machinery: JSON bodies, a handful of headers, no cookies, redirects, proxies or compression.

`ConnectionPool` keeps idle connections per origin (scheme, host, port), at most `max_connections` requests in
flight, TLS with the bot's trust context (`bot/tls.py`) and SNI. A request that fails or is cancelled closes
its connection; a connection is reused only when the response said keep-alive and it was idle for less than
`idle_s`. Failures to connect, connections lost before the whole answer, and unreadable answers raise
`ConnectionError` (the sender's `classify` retries them); timeouts are the caller's (`asyncio.timeout`).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-case
    body: bytes


class ConnectionLost(ConnectionError):
    """The connection failed, or closed before the whole response arrived."""


class InvalidRequest(ValueError):
    """A request that would not be one well-formed HTTP/1.1 request (a CR, LF or NUL where it would split a
    line, a method or header name that is not a token): refused before a byte is written."""


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")  # controls and spaces would end or split the request line
_BAD_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB (RFC 9110 field-value)


def request_head(method: str, host: str, target: str, headers: dict[str, str], length: int) -> bytes:
    """The request line and headers, checked: `InvalidRequest` names the part that would inject a line."""
    if not _TOKEN.fullmatch(method):
        raise InvalidRequest(f"the method {method!r} is not an HTTP token")
    if _BAD_IN_TARGET.search(host):
        raise InvalidRequest(f"the host {host!r} holds a control character or a space")
    if not target.startswith("/") or _BAD_IN_TARGET.search(target):
        raise InvalidRequest(f"the request target {target!r} holds a control character or a space")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise InvalidRequest(f"the header name {name!r} is not an HTTP token")
        if _BAD_IN_VALUE.search(value):
            raise InvalidRequest(f"the value of header {name} holds a control character")
        lines.append(f"{name}: {value}")
    lines += [f"Content-Length: {length}", "", ""]
    return "\r\n".join(lines).encode("utf-8")


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return host if self.port == default else f"{host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, the response parsed as it arrives."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[HttpResponse] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._reason = ""
        self.closed = False
        self.keep_alive = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionLost(f"unreadable HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionLost(f"connection closed before the response ({exc or 'by the server'})"))

    # httptools callbacks

    def on_status(self, status: bytes) -> None:
        self._reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer, self._answer = self._answer, None
        response = HttpResponse(self._parser.get_status_code(), self._reason, self._headers, b"".join(self._body))
        self.keep_alive = self._parser.should_keep_alive()
        self._headers, self._body, self._reason = {}, [], ""
        if answer is not None and not answer.done():
            answer.set_result(response)

    # use

    async def exchange(self, request: bytes) -> HttpResponse:
        if self._transport is None or self.closed:
            raise ConnectionLost("connection is closed")
        self._answer = asyncio.get_running_loop().create_future()
        self.keep_alive = False
        self._transport.write(request)
        return await self._answer

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: Exception) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections per origin (see the module docstring)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *, max_connections: int = 200,
                 idle_s: float = 50.0) -> None:
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._idle_s = idle_s
        self._origins: dict[str, tuple[_Origin, str]] = {}  # base URL → (origin, path prefix)

    async def request(self, method: str, base_url: str, path: str, headers: dict[str, str],
                      body: bytes = b"") -> HttpResponse:
        """`method` `base_url` + `path` (already URL-quoted) with `headers` and `body`; the whole response."""
        origin, prefix = self._origin(base_url)
        request = request_head(method, origin.host_header, f"{prefix}/{path}", headers, len(body)) + body
        async with self._slots:
            connection = self._reuse(origin) or await self._connect(origin)
            try:
                response = await connection.exchange(request)
            except BaseException:
                connection.close()  # a request that failed or was cancelled leaves the connection in no known state
                raise
            if connection.keep_alive and not connection.closed:
                connection.idle_since = asyncio.get_running_loop().time()
                idle = self._idle.setdefault(origin, deque())
                while idle and (idle[0].closed or connection.idle_since - idle[0].idle_since >= self._idle_s):
                    idle.popleft().close()  # closed by the server meanwhile, or idle too long
                idle.append(connection)
            else:
                connection.close()
            return response

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _origin(self, base_url: str) -> tuple[_Origin, str]:
        known = self._origins.get(base_url)
        if known is None:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {base_url!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            if len(self._origins) > 1024:
                self._origins.clear()
            known = self._origins[base_url] = (_Origin(parts.scheme, parts.hostname, port), parts.path.rstrip("/"))
        return known

    def _reuse(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have been closed by the server
            if not connection.closed and now - connection.idle_since < self._idle_s:
                return connection
            connection.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self._ssl if origin.scheme == "https" else None
        if origin.scheme == "https" and tls is None:
            tls = ssl.create_default_context()
        try:
            _, connection = await loop.create_connection(
                _Connection, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None)
        except OSError as exc:  # refused, unreachable, DNS, TLS verification
            raise ConnectionLost(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        return connection
