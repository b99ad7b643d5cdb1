"""Drive the real Microsoft 365 Agents Playground (npm `@microsoft/m365agentsplayground`) from tests.

The Playground is a node server that plays both Teams client and Bot Connector. It calls the bot's
`/api/messages` with activities whose `serviceUrl` is `http://localhost:<port>/_connector` (no
`Authorization` header unless it is given client credentials), and the bot replies there. The browser
UI talks to it over HTTP and two WebSockets; this driver speaks that same API:

    GET  /_internal/v1/config                           users, bot, chats (waits <=15 s for the bot)
    POST /_conversation/v1/conversations/{id}/messages  {"from": {"id"}, "text", "textFormat"}
    POST /_conversation/v1/submit                       Action.Submit: {conversation, from, replyToId, value}
    POST /_conversation/v1/invoke                       Action.Execute: {"name": "adaptiveCard/action", ...}
    POST /_debug/conversation/{id}/installation         installationUpdate "add" + conversationUpdate
    GET  /_internal/v1/customActivities/template        ?conversationId=&type=uninstall (install, botAdded...)
    POST /_internal/v1/customActivities                 posts the given activity to the bot as is
    WS   /_ws_conversation/v1/conversations/stream      {"action": "createMessage"|"updateMessage"|"typing"}
    WS   /_ws/log/stream                                {"logAction": "appendLog", "log": {...}}: every HTTP
                                                        exchange with the bot, with its status code
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
PACKAGE = "@microsoft/m365agentsplayground"
BOT_APP_LABEL = "User Application"  # the `to`/`from` of log items for the bot's side
LISTENING = re.compile(rb"Listening on (\d+)")
# Variables that would change what the Playground does behind the driver's back.
_PLAYGROUND_ENV = re.compile(r"^(M365_AGENTS_PLAYGROUND_|TEAMSAPPTESTER_|TEAMS_APP_TEST_TOOL_)")

T = TypeVar("T")


class PlaygroundUnavailable(RuntimeError):
    """node or npm is missing, or the Playground package could not be installed."""


class PlaygroundError(RuntimeError):
    """The Playground failed to start, refused a request, or went away."""


class PlaygroundTimeout(AssertionError):
    """An expected message or delivery did not arrive in time (a test failure, with diagnostics)."""


# --------------------------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class NodeTools:
    """Where node is and the Playground's `cli.js` (run as `node cli.js`, so no wrapper process)."""

    node: str
    npm: str
    cli: Path


def _declared_versions(node_dir: Path) -> dict[str, str]:
    manifest = json.loads((node_dir / "package.json").read_text(encoding="utf-8"))
    return dict(manifest.get("dependencies", {}))


def node_modules_current(node_dir: Path = NODE_DIR) -> bool:
    """True when every dependency in package.json is installed at exactly its pinned version."""
    for name, version in _declared_versions(node_dir).items():
        installed = node_dir / "node_modules" / name / "package.json"
        try:
            if json.loads(installed.read_text(encoding="utf-8")).get("version") != version:
                return False
        except (OSError, ValueError):
            return False
    return (node_dir / "node_modules" / PACKAGE / "cli.js").is_file()


def find_node_tools(node_dir: Path = NODE_DIR, *, install: bool = True, timeout: float = 900) -> NodeTools:
    """Locate node and npm; run `npm ci` in `node_dir` when its node_modules is missing or stale."""
    node, npm = shutil.which("node"), shutil.which("npm")
    missing = [name for name, path in (("node", node), ("npm", npm)) if path is None]
    if missing or node is None or npm is None:
        raise PlaygroundUnavailable(
            f"{' and '.join(missing)} not found on PATH (install Node.js 20+ with npm)"
        )
    if not node_modules_current(node_dir):
        if not install:
            raise PlaygroundUnavailable(f"{node_dir}/node_modules is missing or stale; run `npm ci` there")
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=node_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PlaygroundUnavailable(f"`npm ci` in {node_dir} took over {timeout:.0f} s") from None
        if done.returncode != 0 or not node_modules_current(node_dir):
            output = (done.stdout + done.stderr)[-3000:]
            raise PlaygroundUnavailable(f"`npm ci` in {node_dir} failed (exit {done.returncode}):\n{output}")
    return NodeTools(node=node, npm=npm, cli=node_dir / "node_modules" / PACKAGE / "cli.js")


def _no_proxy_for_loopback(env: dict[str, str]) -> None:
    """Make sure loopback traffic never goes through a proxy the environment may name."""
    loopback = "localhost,127.0.0.1,::1"
    for key in ("NO_PROXY", "no_proxy"):
        env[key] = f"{env[key]},{loopback}" if env.get(key) else loopback


def loopback_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment (or `base`) with loopback excluded from any proxy."""
    env = dict(os.environ if base is None else base)
    _no_proxy_for_loopback(env)
    return env


def tail(path: Path, limit: int = 6000) -> str:
    """The last `limit` characters of a text file, or a note that it does not exist."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"<{path} not readable>"
    return text if len(text) <= limit else "..." + text[-limit:]


# --------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Mark:
    """A position in the Playground's two event streams; waits look only at events after it."""

    messages: int = 0
    logs: int = 0


@dataclass(frozen=True)
class SentMessage:
    """What the Playground answered to a user message, plus the stream positions just before it."""

    message_id: str
    conversation_id: str
    mark: Mark


@dataclass(frozen=True)
class ChatMessage:
    """A `createMessage`/`updateMessage` event from the conversation WebSocket (what the UI renders)."""

    action: str
    conversation_id: str
    message_id: str
    from_id: str
    text: str
    attachments: list[dict[str, Any]]
    raw: dict[str, Any]

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> ChatMessage:
        message = event.get("message") or {}
        return cls(
            action=str(event.get("action", "")),
            conversation_id=str(event.get("actionConversationId", "")),
            message_id=str(message.get("messageId", "")),
            from_id=str((message.get("from") or {}).get("id", "")),
            text=str(message.get("text") or ""),
            attachments=list(message.get("attachments") or []),
            raw=event,
        )

    @property
    def cards(self) -> list[dict[str, Any]]:
        """The Adaptive Card contents among the attachments."""
        return [
            a.get("content") or {}
            for a in self.attachments
            if a.get("contentType") == "application/vnd.microsoft.card.adaptive"
        ]

    def __str__(self) -> str:
        body = self.text or json.dumps(self.attachments)[:300]
        return f"{self.action} {self.message_id} from {self.from_id}: {body!r}"


@dataclass(frozen=True)
class Delivery:
    """One HTTP call the Playground made to the bot, from its log stream."""

    activity_type: str
    activity: dict[str, Any]
    status: int | None
    response: Any
    raw: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def __str__(self) -> str:
        extra = f" action={self.activity.get('action')}" if self.activity.get("action") else ""
        return f"{self.activity_type}{extra} -> {self.status} {json.dumps(self.response)[:300]}"


def _as_mark(after: Mark | SentMessage | None) -> Mark:
    if after is None:
        return Mark()
    return after.mark if isinstance(after, SentMessage) else after


# --------------------------------------------------------------------------------------------- driver


class Playground:
    """One Playground process wired to one bot endpoint, with listeners on both WebSockets.

    Use as `async with Playground(tools, log_dir) as pg: await pg.start(endpoint)`; `stop()` is
    idempotent. Output goes to `log_dir` (`playground.out`: stdout/stderr; `playground.log`: its log).
    """

    def __init__(
        self,
        tools: NodeTools | None,
        log_dir: Path,
        *,
        channel: str = "msteams",
        conversation_id: str | None = None,
        diagnostic_files: Sequence[Path] = (),
    ) -> None:
        self.tools = tools
        self.log_dir = log_dir
        self.channel = channel
        self.requested_conversation_id = conversation_id
        self.diagnostic_files = list(diagnostic_files)
        self.output_path = log_dir / "playground.out"
        self.log_path = log_dir / "playground.log"
        self.port: int | None = None
        self.startup_seconds: float | None = None
        self.settings: dict[str, Any] = {}
        self.messages: list[ChatMessage] = []
        self.events: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sockets: list[aiohttp.ClientWebSocketResponse] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._gone: str | None = None

    async def __aenter__(self) -> Playground:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise PlaygroundError("the Playground is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def service_url(self) -> str:
        """The serviceUrl the Playground puts in activities (it listens on all interfaces)."""
        return f"http://localhost:{self.port}/_connector"

    @property
    def conversation_id(self) -> str:
        """The personal chat (1:1 with the bot), where messages go by default."""
        return str(self.settings["personalChat"]["id"])

    @property
    def user_id(self) -> str:
        return str(self.settings["currentUser"]["id"])

    @property
    def bot_id(self) -> str:
        return str(self.settings["bot"]["id"])

    @property
    def tenant_id(self) -> str:
        return str(self.settings["tenantId"])

    async def start(self, bot_endpoint: str, port: int = 0, *, timeout: float = 60.0) -> None:
        """Spawn the Playground for `bot_endpoint` and wait until its API and WebSockets are up.

        `port=0` lets it pick a free port; with a busy fixed port it also falls back to a random one,
        so the real port is always read from its `Listening on N` line.
        """
        if self._proc is not None:
            raise PlaygroundError("already started")
        if self.tools is None:
            raise PlaygroundError("no NodeTools given: this driver can only attach() to a running Playground")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in loopback_env().items() if not _PLAYGROUND_ENV.match(k)}
        env["TEAMSAPPTESTER_BROWSER"] = "none"  # never open a browser
        env["M365_AGENTS_PLAYGROUND_LOGFILE"] = str(self.log_path)
        args = [
            str(self.tools.cli),
            "-e",
            bot_endpoint,
            "-c",
            self.channel,
            "-p",
            str(port),
            "--disable-telemetry",
        ]
        if self.requested_conversation_id:
            args += ["--conversation-id", self.requested_conversation_id]
        started = time.monotonic()
        # cwd is the log dir: no stray .m365agentsplayground.yml is picked up, nothing lands in the repo.
        self._proc = await asyncio.create_subprocess_exec(
            self.tools.node,
            *args,
            cwd=self.log_dir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        port_found: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._pump_output(port_found)))
        try:
            self.port = await asyncio.wait_for(port_found, timeout)
            await self._connect(max(1.0, timeout - (time.monotonic() - started)))
        except BaseException as exc:
            note = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"failed: {exc!r}"
            diagnostics = self.diagnostics()
            await self.stop()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise PlaygroundError(f"Playground start {note}\n{diagnostics}") from exc
        self.startup_seconds = time.monotonic() - started

    async def attach(self, port: int, *, timeout: float = 30.0) -> None:
        """Talk to a Playground someone else started (e.g. `make playground`) on `port`; `stop()` then
        closes only this driver's connections, never that process."""
        if self._proc is not None or self.port is not None:
            raise PlaygroundError("already started")
        self.port = port
        try:
            await self._connect(timeout)
        except BaseException:
            await self.stop()
            raise

    async def _connect(self, timeout: float) -> None:
        """Read the Playground's config (once it answers) and listen on both of its WebSockets."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.settings = (await self._wait_for_config(timeout))["config"]
        for path, handler in (
            ("/_ws_conversation/v1/conversations/stream", self._on_conversation_event),
            ("/_ws/log/stream", self._on_log_event),
        ):
            ws = await self._session.ws_connect(self.base_url + path, heartbeat=None)
            self._sockets.append(ws)
            self._tasks.append(asyncio.create_task(self._listen(ws, handler)))

    async def _pump_output(self, port_found: asyncio.Future[int]) -> None:
        """Copy the process's output to `output_path`; resolve `port_found` from `Listening on N`."""
        assert self._proc is not None and self._proc.stdout is not None
        seen = b""
        with self.output_path.open("wb") as out:
            while chunk := await self._proc.stdout.read(65536):
                out.write(chunk)
                out.flush()
                if not port_found.done():
                    seen = (seen + chunk)[-4096:]
                    match = LISTENING.search(seen)
                    if match and seen.find(b"\n", match.end()) >= 0:  # the whole number has arrived
                        port_found.set_result(int(match.group(1)))
        code = await self._proc.wait()
        if not port_found.done():
            port_found.set_exception(
                PlaygroundError(f"the Playground exited with code {code} before listening")
            )
        await self._mark_gone(f"the Playground process exited with code {code}")

    async def _wait_for_config(self, timeout: float) -> dict[str, Any]:
        """Poll the config endpoint (it answers once the bot endpoint does, or after 15 s anyway)."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if self._gone:
                raise PlaygroundError(self._gone)
            try:
                return await self.config(timeout=max(0.5, deadline - time.monotonic()))
            except (aiohttp.ClientError, PlaygroundError):
                if time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)  # bounded back-off between polls, not a wait for an outcome
            delay = min(delay * 2, 0.5)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """Close the WebSockets and the HTTP session, then terminate the process; returns its exit code."""
        for ws in self._sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        self._sockets.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        code: int | None = None
        if self._proc is not None:
            if self._proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.terminate()
                try:
                    await asyncio.wait_for(self._proc.wait(), timeout)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.kill()
                    await self._proc.wait()
            code = self._proc.returncode
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
            for task in self._tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
        await self._mark_gone("the Playground was stopped")
        return code

    # ---------------------------------------------------------------- streams

    async def _listen(
        self, ws: aiohttp.ClientWebSocketResponse, handler: Callable[[dict[str, Any]], None]
    ) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    event = json.loads(msg.data)
                except ValueError:
                    continue
                async with self._changed:
                    handler(event)
                    self._changed.notify_all()
        await self._mark_gone("a Playground WebSocket closed")

    def _on_conversation_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event.get("action") in ("createMessage", "updateMessage"):
            self.messages.append(ChatMessage.from_event(event))

    def _on_log_event(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("log"), dict):
            self.logs.append(event["log"])

    async def _mark_gone(self, reason: str) -> None:
        async with self._changed:
            self._gone = self._gone or reason
            self._changed.notify_all()

    def mark(self) -> Mark:
        """The current end of both streams: pass it as `after=` to wait only for what comes next."""
        return Mark(messages=len(self.messages), logs=len(self.logs))

    @property
    def deliveries(self) -> list[Delivery]:
        """Every activity the Playground posted to the bot, with the bot's status code."""
        return [_delivery(item) for item in self.logs if _is_delivery(item)]

    @property
    def connector_errors(self) -> list[dict[str, Any]]:
        """Calls the bot made to the Playground's connector that were refused (status >= 400)."""
        return [
            item
            for item in self.logs
            if item.get("from") == BOT_APP_LABEL
            and int((item.get("response") or {}).get("statusCode") or 0) >= 400
        ]

    async def _wait(
        self, items: list[T], start: int, match: Callable[[T], bool], timeout: float, what: str
    ) -> T:
        async def scan() -> T:
            index = start
            async with self._changed:
                while True:
                    while index < len(items):
                        if match(items[index]):
                            return items[index]
                        index += 1
                    if self._gone:
                        raise PlaygroundError(self._gone)
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except (TimeoutError, PlaygroundError) as exc:
            reason = f"no {what} within {timeout} s" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            raise PlaygroundTimeout(f"{reason}\n{self.diagnostics()}") from None

    async def wait_for_message(
        self,
        predicate: Callable[[ChatMessage], bool] | None = None,
        *,
        after: Mark | SentMessage | None = None,
        timeout: float = 15.0,
        from_bot: bool = True,
        actions: Iterable[str] = ("createMessage", "updateMessage"),
    ) -> ChatMessage:
        """The first message event after `after` (from the bot, by default) that `predicate` accepts."""
        wanted = set(actions)
        bot_id = self.bot_id

        def match(message: ChatMessage) -> bool:
            if message.action not in wanted or (from_bot and message.from_id != bot_id):
                return False
            return predicate is None or predicate(message)

        return await self._wait(self.messages, _as_mark(after).messages, match, timeout, "matching message")

    async def wait_for_text(
        self, *needles: str, after: Mark | SentMessage | None = None, timeout: float = 15.0
    ) -> ChatMessage:
        """The first bot message after `after` whose text contains every one of `needles`."""
        return await self.wait_for_message(
            lambda m: all(n in m.text for n in needles), after=after, timeout=timeout
        )

    async def wait_for_delivery(
        self,
        activity_type: str,
        predicate: Callable[[Delivery], bool] | None = None,
        *,
        after: Mark | SentMessage | None = None,
        timeout: float = 15.0,
    ) -> Delivery:
        """The bot's answer to the next `activity_type` activity the Playground posted to it."""

        def match(item: dict[str, Any]) -> bool:
            if not _is_delivery(item) or item.get("activityName") != activity_type:
                return False
            return predicate is None or predicate(_delivery(item))

        item = await self._wait(self.logs, _as_mark(after).logs, match, timeout, f"{activity_type} delivery")
        return _delivery(item)

    # ---------------------------------------------------------------- API calls

    async def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        if self._session is None:
            raise PlaygroundError("the Playground is not started")
        client_timeout = aiohttp.ClientTimeout(total=timeout) if timeout else None
        async with self._session.request(
            method, self.base_url + path, timeout=client_timeout, **kwargs
        ) as resp:
            body = await resp.text()
            if resp.status >= 400:
                raise PlaygroundError(f"{method} {path} -> {resp.status}: {body[:1000]}")
            if not body:
                return None
            try:
                return json.loads(body)
            except ValueError:
                return body

    async def config(self, *, timeout: float | None = None) -> dict[str, Any]:
        """GET /_internal/v1/config: {"config": {tenantId, bot, currentUser, users, personalChat,
        groupChats, teams}, "internalConfig": {locale, localTimezone, channelId, debugConfig}}."""
        result = await self._request("GET", "/_internal/v1/config", timeout=timeout)
        if not isinstance(result, dict) or "config" not in result:
            raise PlaygroundError(f"unexpected config answer: {result!r}")
        return result

    async def send_text(
        self,
        text: str,
        *,
        conversation_id: str | None = None,
        from_id: str | None = None,
        text_format: str = "plain",
    ) -> SentMessage:
        """Type `text` into a conversation (the personal chat by default) as the current user."""
        conversation = conversation_id or self.conversation_id
        mark = self.mark()
        answer = await self._request(
            "POST",
            f"/_conversation/v1/conversations/{conversation}/messages",
            json={"from": {"id": from_id or self.user_id}, "text": text, "textFormat": text_format},
        )
        return SentMessage(
            message_id=str((answer or {}).get("messageId", "")), conversation_id=conversation, mark=mark
        )

    async def install(self, conversation_id: str | None = None) -> Mark:
        """What the UI does on first open: installationUpdate (action "add", msteams only) followed by
        conversationUpdate with the user and the bot in membersAdded. Returns the mark before it."""
        mark = self.mark()
        await self._request(
            "POST", f"/_debug/conversation/{conversation_id or self.conversation_id}/installation", json={}
        )
        return mark

    async def activity_template(self, kind: str, conversation_id: str | None = None) -> dict[str, Any]:
        """A ready-made activity of `kind` (install, uninstall, botAdded, botRemoved, userAdded, ...)."""
        result = await self._request(
            "GET",
            "/_internal/v1/customActivities/template",
            params={"conversationId": conversation_id or self.conversation_id, "type": kind},
        )
        if not isinstance(result, dict):
            raise PlaygroundError(f"unexpected template answer: {result!r}")
        return result

    async def send_custom_activity(self, activity: dict[str, Any]) -> Mark:
        """Post `activity` to the bot as is; the Playground answers before the bot does."""
        mark = self.mark()
        await self._request("POST", "/_internal/v1/customActivities", json=activity)
        return mark

    async def uninstall(self, conversation_id: str | None = None) -> Mark:
        """installationUpdate with action "remove" (via the custom-activity template, as the UI does)."""
        return await self.send_custom_activity(await self.activity_template("uninstall", conversation_id))

    async def submit(
        self,
        card_message: ChatMessage | str,
        value: dict[str, Any],
        *,
        conversation_id: str | None = None,
        from_id: str | None = None,
    ) -> Mark:
        """Press an Action.Submit button: the bot gets a message activity with `value` (the button's
        `data` merged with the card's inputs, as the UI would send) and `replyToId` the card message."""
        message_id = card_message.message_id if isinstance(card_message, ChatMessage) else card_message
        if conversation_id is None and isinstance(card_message, ChatMessage):
            conversation_id = card_message.conversation_id
        mark = self.mark()
        await self._request(
            "POST",
            "/_conversation/v1/submit",
            json={
                "conversation": {"id": conversation_id or self.conversation_id},
                "from": {"id": from_id or self.user_id},
                "replyToId": message_id,
                "value": value,
            },
        )
        return mark

    async def execute(
        self,
        card_message: ChatMessage | str,
        verb: str,
        data: dict[str, Any] | None = None,
        *,
        conversation_id: str | None = None,
        from_id: str | None = None,
    ) -> Any:
        """Press an Action.Execute button: an `adaptiveCard/action` invoke; returns the bot's
        invoke response `{"type", "value"}` (the Playground answers 502 when the bot fails)."""
        message_id = card_message.message_id if isinstance(card_message, ChatMessage) else card_message
        if conversation_id is None and isinstance(card_message, ChatMessage):
            conversation_id = card_message.conversation_id
        return await self._request(
            "POST",
            "/_conversation/v1/invoke",
            json={
                "name": "adaptiveCard/action",
                "value": {
                    "action": {"type": "Action.Execute", "verb": verb, "data": data or {}},
                    "trigger": "manual",
                },
                "conversation": {"id": conversation_id or self.conversation_id},
                "from": {"id": from_id or self.user_id},
                "replyToId": message_id,
            },
        )

    # ---------------------------------------------------------------- diagnostics

    def diagnostics(self) -> str:
        """Recent messages, deliveries and the tails of the logs, for failure messages."""
        lines = [f"Playground port={self.port} returncode={self._proc.returncode if self._proc else None}"]
        lines.append("messages seen:" if self.messages else "messages seen: none")
        lines += [f"  {m}" for m in self.messages[-15:]]
        deliveries = self.deliveries
        lines.append("deliveries to the bot:" if deliveries else "deliveries to the bot: none")
        lines += [f"  {d}" for d in deliveries[-15:]]
        for item in self.connector_errors[-5:]:
            lines.append(f"  connector refused the bot: {json.dumps(item)[:500]}")
        warnings = [i for i in self.logs if i.get("level") in ("warning", "error")]
        lines += [f"  playground {i.get('level')}: {i.get('displayText')}" for i in warnings[-5:]]
        for path in (self.output_path, self.log_path, *self.diagnostic_files):
            lines.append(f"--- {path} (tail)\n{tail(path, 4000)}")
        return "\n".join(lines)


def _is_delivery(item: dict[str, Any]) -> bool:
    return item.get("type") == "bot" and item.get("to") == BOT_APP_LABEL


def _delivery(item: dict[str, Any]) -> Delivery:
    response = item.get("response") or {}
    status = response.get("statusCode")
    return Delivery(
        activity_type=str(item.get("activityName", "")),
        activity=dict((item.get("request") or {}).get("body") or {}),
        status=int(status) if status is not None else None,
        response=response.get("body"),
        raw=item,
    )
