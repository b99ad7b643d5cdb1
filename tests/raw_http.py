"""A raw-socket HTTP/1.1 server for tests: it sees the bytes a client writes and answers bytes of its choosing.

It reads each request by hand (head up to the blank line, then `Content-Length` bytes of body) and records the
head's lines exactly as written, so a test can assert what no HTTP library would let it see: a header line
injected by a CR/LF in a value, a control character in the request line. By default it answers like the Bot
Connector (`{"id": …}`); a test may script each answer as raw bytes (interim 1xx answers, bodies ended by
closing, chunked bodies, endless headers, trickled bodies), or as a coroutine that writes what it likes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

UNSAFE = [chr(c) for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)]
"""Every control (C0, DEL, C1) and Unicode line/paragraph separator character."""


@dataclass
class RawRequest:
    lines: list[bytes]  # the request line and every header line, as written (CRLF removed)
    body: bytes
    peer: int  # the client's port: which connection carried it

    @property
    def request_line(self) -> str:
        return self.lines[0].decode("utf-8", "replace")

    @property
    def method(self) -> str:
        return self.request_line.split(" ")[0]

    @property
    def target(self) -> str:
        parts = self.request_line.split(" ")
        return parts[1] if len(parts) > 1 else ""

    @property
    def headers(self) -> dict[str, str]:
        out = {}
        for line in self.lines[1:]:
            name, _, value = line.decode("utf-8", "replace").partition(":")
            out[name.strip().lower()] = value.strip()
        return out

    def json(self) -> object:
        return json.loads(self.body) if self.body else None


Writer = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[bool]]
"""Writes the answer to one request; returns False to close the connection afterwards."""


def response(status: int = 200, body: bytes = b"", *, reason: str = "OK", headers: dict[str, str] | None = None,
             length: bool = True) -> bytes:
    """The bytes of one plain answer (with Content-Length unless `length` is False)."""
    head = [f"HTTP/1.1 {status} {reason}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class RawServer:
    """`async with RawServer() as server:` serves at `server.url`; `script` answers, else `connector_answer`."""

    ssl_context: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    requests: list[RawRequest] = field(default_factory=list)
    script: list[bytes | Writer] = field(default_factory=list)  # answers for the next requests, in order
    max_head_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        self.url = ""
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._ids = itertools.count(1)
        self._writers: set[asyncio.StreamWriter] = set()
        self.arrived = asyncio.Event()

    async def __aenter__(self) -> RawServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, name: str | None = None) -> str:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ssl_context)
        port = self._server.sockets[0].getsockname()[1]
        host = name or (f"[{self.host}]" if ":" in self.host else self.host)
        self.url = f"{'https' if self.ssl_context else 'http'}://{host}:{port}/"
        return self.url

    async def stop(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def head_lines(self) -> list[str]:
        """Every request and header line every request carried, decoded."""
        return [line.decode("utf-8", "replace") for r in self.requests for line in r.lines]

    async def connector_answer(self, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        """What the Bot Connector answers: a new conversation's id, or the posted activity's id."""
        if request.method == "POST" and request.target.rstrip("/").endswith("/v3/conversations"):
            body = {"id": f"a:raw-{next(self._ids)}"}
        else:
            body = {"id": f"raw-{next(self._ids)}"}
        writer.write(response(200, json.dumps(body).encode(), headers={"Content-Type": "application/json"}))
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")[1]
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head[:-4].split(b"\r\n")
                request = RawRequest(lines, b"", peer)
                length = int(request.headers.get("content-length", "0") or 0)
                try:
                    request.body = await reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(request)
                self.arrived.set()
                answer = self.script.pop(0) if self.script else self.connector_answer
                if isinstance(answer, bytes):
                    writer.write(answer)
                    keep = True
                else:
                    keep = await answer(request, writer)
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
