"""Keep-alive HTTP/1.1 to the Bot Connector for the hot paths (turn replies, proactive sends), at a third of the CPU.

Measured on the benchmark machine (docs/architecture.md, "Turn cost and send cost"): one POST through an
aiohttp `ClientSession` costs about 0.25 ms of CPU, most of it the session's per-request machinery (URL and
header objects, cookie and proxy handling, tracing hooks, timers); the same request written on an asyncio
protocol and parsed by httptools (the C parser uvicorn uses) about 0.09 ms. The Bot Connector's calls need little
of that machinery: JSON bodies, a handful of headers, no cookies, redirects or compression.

`ConnectionPool` keeps idle connections per origin (scheme, host, port), at most `max_connections` requests in
flight per origin, TLS with the bot's trust context (`bot/tls.py`) and SNI, through the organisation's proxy
when `bot/proxy.py` names one (a CONNECT tunnel for https, absolute-form requests for http). What it writes is
checked first (`request_head`: no CR, LF, NUL or other control in the method, target, host or headers). What it
reads is framed as RFC 9112 says: interim 1xx answers are skipped, a body ends by Content-Length, by chunked
encoding, or by the server closing the connection; the head is capped at `max_head_bytes` (64 KiB) and the body
at `max_body_bytes` (4 MiB). A request that fails or is cancelled closes its connection; a connection is reused
only when the response said keep-alive and it was idle for less than `idle_s`. Failures to connect (the proxy's
refusal included), connections lost before the whole answer, unreadable and oversized answers raise
`ConnectionError` (the sender's `classify` retries them); timeouts are the caller's (`asyncio.timeout`).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from bot.proxy import Proxy, ProxySettings


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-case
    body: bytes


class ConnectionLost(ConnectionError):
    """The connection failed, or closed before the whole response arrived."""


class ResponseTooLarge(ConnectionLost):
    """The answer's head or body is over the pool's cap: the connection is closed."""


class InvalidRequest(ValueError):
    """A request that would not be one well-formed HTTP/1.1 request (a CR, LF or NUL where it would split a
    line, a method or header name that is not a token): refused before a byte is written."""


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")  # controls and spaces would end or split the request line
_BAD_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB (RFC 9110 field-value)


def request_head(method: str, host: str, target: str, headers: dict[str, str], length: int | None) -> bytes:
    """The request line and headers, checked: `InvalidRequest` names the part that would inject a line.
    `target` is origin-form (`/path`), absolute-form (`http://…`, to a proxy) or, for CONNECT, host:port;
    `length` None: no Content-Length (CONNECT)."""
    if not _TOKEN.fullmatch(method):
        raise InvalidRequest(f"the method {method!r} is not an HTTP token")
    if _BAD_IN_TARGET.search(host):
        raise InvalidRequest(f"the host {host!r} holds a control character or a space")
    form_ok = target.startswith(("/", "http://")) or (method == "CONNECT" and target == host)
    if not form_ok or _BAD_IN_TARGET.search(target):
        raise InvalidRequest(f"the request target {target!r} holds a control character or a space")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise InvalidRequest(f"the header name {name!r} is not an HTTP token")
        if _BAD_IN_VALUE.search(value):
            raise InvalidRequest(f"the value of header {name} holds a control character")
        lines.append(f"{name}: {value}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += ["", ""]
    return "\r\n".join(lines).encode("utf-8")


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    proxy: Proxy | None = None

    @property
    def authority(self) -> str:
        """host:port (brackets around an IPv6 literal), what CONNECT names."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return host if self.port == default else f"{host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, the response parsed as it arrives (see the module docstring)."""

    def __init__(self, max_head_bytes: int = 64 * 1024, max_body_bytes: int = 4 * 1024 * 1024) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[HttpResponse] | None = None
        self._max_head, self._max_body = max_head_bytes, max_body_bytes
        self._head_bytes = 0  # bytes read of this exchange's heads (interim answers included)
        self._reset()
        self.closed = False
        self.keep_alive = False
        self.idle_since = 0.0

    def _reset(self) -> None:
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._reason = ""
        self._in_body = False  # the head of a final answer is read; its body is arriving
        self._too_large = ""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's transports do not subclass asyncio's)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._in_body:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionLost(f"unreadable HTTP response: {exc}"))
            self.close()
            return
        if not self._in_body and self._head_bytes > self._max_head and self._answer is not None:
            self._too_large = f"the response head is over {self._max_head} bytes"
        if self._too_large:
            self._fail(ResponseTooLarge(self._too_large))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and self._in_body and self._ends_by_close():  # the body ends when the server closes
            self.on_message_complete()
        self._fail(ConnectionLost(f"connection closed before the response ({exc or 'by the server'})"))

    def _ends_by_close(self) -> bool:
        status = self._parser.get_status_code()
        return "content-length" not in self._headers and "chunked" not in self._headers.get(
            "transfer-encoding", "").lower() and status not in (204, 304)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._reset()

    def on_status(self, status: bytes) -> None:
        self._reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        if not 100 <= self._parser.get_status_code() < 200:
            self._in_body = True

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            self._too_large = f"the response body is over {self._max_body} bytes"
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 or self._too_large:  # an interim answer (100 Continue, 103 Early Hints): skip
            return
        answer, self._answer = self._answer, None
        response = HttpResponse(status, self._reason, self._headers, b"".join(self._body))
        self.keep_alive = self._parser.should_keep_alive() and not self.closed
        self._reset()
        self._head_bytes = 0
        if answer is not None and not answer.done():
            answer.set_result(response)

    # use

    async def exchange(self, request: bytes) -> HttpResponse:
        if self._transport is None or self.closed:
            raise ConnectionLost("connection is closed")
        self._answer = asyncio.get_running_loop().create_future()
        self.keep_alive = False
        self._head_bytes = 0
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
                 idle_s: float = 50.0, proxies: ProxySettings | None = None, max_head_bytes: int = 64 * 1024,
                 max_body_bytes: int = 4 * 1024 * 1024) -> None:
        self._ssl = ssl_context
        self._max_connections = max_connections
        self._slots: dict[_Origin, asyncio.Semaphore] = {}  # per origin: one slow host does not starve the others
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._idle_s = idle_s
        self._proxies = proxies or ProxySettings()
        self._limits = (max_head_bytes, max_body_bytes)
        self._origins: dict[str, tuple[_Origin, str]] = {}  # base URL → (origin, path prefix)

    async def request(self, method: str, base_url: str, path: str, headers: dict[str, str],
                      body: bytes = b"") -> HttpResponse:
        """`method` `base_url` + `path` (already URL-quoted) with `headers` and `body`; the whole response."""
        origin, prefix = self._origin(base_url)
        target = f"{prefix}/{path}"
        if origin.proxy is not None and origin.scheme == "http":  # plain http through a proxy: absolute form
            target = f"http://{origin.host_header}{target}"
            headers = {**headers, **origin.proxy.headers()}
        request = request_head(method, origin.host_header, target, headers, len(body)) + body
        slots = self._slots.get(origin)
        if slots is None:
            slots = self._slots[origin] = asyncio.Semaphore(self._max_connections)
        async with slots:
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
            origin = _Origin(parts.scheme, parts.hostname, port, self._proxies.for_url(base_url))
            known = self._origins[base_url] = (origin, parts.path.rstrip("/"))
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
        max_head, max_body = self._limits
        if origin.proxy is not None:
            return await self._tunnel(origin, tls)
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(max_head, max_body), origin.host, origin.port, ssl=tls,
                server_hostname=origin.host if tls else None)
        except OSError as exc:  # refused, unreachable, DNS, TLS verification
            raise ConnectionLost(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        return connection

    async def _tunnel(self, origin: _Origin, tls: ssl.SSLContext | None) -> _Connection:
        """A connection through the proxy: for https a CONNECT tunnel with TLS to the origin inside it; for http
        the proxy itself (requests in absolute form)."""
        proxy = origin.proxy
        assert proxy is not None
        loop = asyncio.get_running_loop()
        if tls is None:
            try:
                _, connection = await loop.create_connection(lambda: _Connection(*self._limits), proxy.host,
                                                             proxy.port)
            except OSError as exc:
                raise ConnectionLost(f"cannot connect to the proxy {proxy.url}: {exc}") from exc
            return connection
        try:
            transport, handshake = await loop.create_connection(lambda: _Handshake(self._limits[0]), proxy.host,
                                                                proxy.port)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to the proxy {proxy.url}: {exc}") from exc
        try:
            authority = origin.authority
            transport.write(request_head("CONNECT", authority, authority, proxy.headers(), None))
            status_line = await handshake.answer
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[1].startswith("2"):
                raise ConnectionLost(f"the proxy {proxy.url} refused CONNECT {authority}: {status_line[:200]}")
            connection = _Connection(*self._limits)
            try:
                tunnel = await loop.start_tls(transport, connection, tls, server_hostname=origin.host)
            except (ssl.SSLError, OSError) as exc:
                raise ConnectionLost(f"cannot open TLS to {origin.host} through {proxy.url}: {exc}") from exc
            assert tunnel is not None
            connection.connection_made(tunnel)
            return connection
        except BaseException:
            transport.close()
            raise


class _Handshake(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: `answer` is its status line once the head is complete."""

    def __init__(self, max_head_bytes: int) -> None:
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._head = bytearray()
        self._max = max_head_bytes

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self._head += data
        if b"\r\n\r\n" in self._head:
            self.answer.set_result(bytes(self._head).split(b"\r\n", 1)[0].decode("latin-1"))
        elif len(self._head) > self._max:
            self.answer.set_exception(ResponseTooLarge("the proxy's answer to CONNECT is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionLost(f"the proxy closed the connection during CONNECT ({exc})"))
