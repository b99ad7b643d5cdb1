"""POST /api/notify and GET /api/notify/{id}: other systems ask the bot to message people.

The request is validated field by field (400 naming the field), its targets resolved against the
conversation references, and one outbox row queued per target; the delivery worker does the rest.
A channel is one target (a new post in it), however many of its threads the bot has seen; a thread's
own id (`…;messageid=…`) posts a reply in that thread.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.delivery.proactive import Admission
from state.model import conversation_key
from state.outbox import PRIORITIES, OutboxItem, OutboxStore
from state.references import ConversationReferences

from .errors import JsonBody, error, field_error

MAX_TARGETS = 10_000
MAX_MESSAGE_BYTES = 28_000  # Teams caps a message at about 28 KB
_FIELDS = {"to", "text", "card", "dedupKey", "priority", "expiresAt"}


class BadRequest(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass
class Notification:
    """A validated request."""

    payload: dict[str, Any]
    target_all: bool = False
    users: list[str] = field(default_factory=list)
    conversations: list[str] = field(default_factory=list)
    dedup_key: str | None = None
    priority: int = 0
    expires_at: float | None = None


def _id_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BadRequest(name, "must be a non-empty list of ids")
    if len(value) > MAX_TARGETS:
        raise BadRequest(name, f"at most {MAX_TARGETS} ids per request")
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise BadRequest(name, "every id must be a non-empty string")
    return list(dict.fromkeys(v.strip() for v in value))


def parse_notification(body: Any, now: float) -> Notification:
    """Validate a notify request body; raises BadRequest naming the offending field."""
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise BadRequest(unknown[0], f"unknown field; allowed: {', '.join(sorted(_FIELDS))}")
    to = body.get("to")
    if not isinstance(to, dict) or len(to) != 1 or next(iter(to)) not in ("all", "users", "conversations"):
        raise BadRequest("to", 'must be exactly one of {"all": true}, {"users": [...]}, {"conversations": [...]}')
    note = Notification(payload={})
    if "all" in to:
        if to["all"] is not True:
            raise BadRequest("to.all", "must be true")
        note.target_all = True
    elif "users" in to:
        note.users = _id_list(to["users"], "to.users")
    else:
        note.conversations = _id_list(to["conversations"], "to.conversations")

    text, card = body.get("text"), body.get("card")
    if text is None and card is None:
        raise BadRequest("text", "give a text, a card, or both")
    payload: dict[str, Any] = {"type": "message"}
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("text", "must be a non-empty string")
        payload["text"] = text
        payload["textFormat"] = "markdown"
    if card is not None:
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            raise BadRequest("card", 'must be an Adaptive Card object with "type": "AdaptiveCard"')
        payload["attachments"] = [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]
    if len(json.dumps(payload).encode()) > MAX_MESSAGE_BYTES:
        raise BadRequest("text" if card is None else "card", f"message is over Teams' {MAX_MESSAGE_BYTES} bytes")
    note.payload = payload

    dedup = body.get("dedupKey")
    if dedup is not None and (not isinstance(dedup, str) or not dedup.strip() or len(dedup) > 200):
        raise BadRequest("dedupKey", "must be a non-empty string of at most 200 characters")
    note.dedup_key = dedup
    priority = body.get("priority", "normal")
    if priority not in PRIORITIES:
        raise BadRequest("priority", 'must be "normal" or "urgent"')
    note.priority = PRIORITIES[priority]
    expires = body.get("expiresAt")
    if expires is not None:
        try:
            when = datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest("expiresAt", "must be an ISO-8601 date-time, e.g. 2026-12-01T09:00:00Z") from None
        if when.tzinfo is None:
            raise BadRequest("expiresAt", "must include a time zone, e.g. 2026-12-01T09:00:00Z")
        if when.timestamp() <= now:
            raise BadRequest("expiresAt", "is already in the past")
        note.expires_at = when.timestamp()
    return note


@dataclass
class Resolved:
    items: list[OutboxItem] = field(default_factory=list)
    unknown_users: list[str] = field(default_factory=list)
    unknown_conversations: list[str] = field(default_factory=list)
    inactive_conversations: list[str] = field(default_factory=list)


async def resolve_targets(note: Notification, references: ConversationReferences) -> Resolved:
    """One outbox item per reachable target; the rest reported."""
    out = Resolved()

    def item(conversation_id: str | None, tenant_id: str | None, user_id: str | None = None) -> OutboxItem:
        target = conversation_id or f"user:{user_id}"
        return OutboxItem(
            payload=note.payload, conversation_id=conversation_id, target_user_id=user_id, tenant_id=tenant_id,
            dedup_key=f"{note.dedup_key}|{target}" if note.dedup_key else None, category="notification",
            priority=note.priority, expires_at=note.expires_at,
        )

    if note.target_all:
        out.items = [item(r.conversation_id, r.tenant_id) for r in await references.all()]
    for conversation_id in note.conversations:
        record = await references.get(conversation_key(conversation_id))
        if record is None:
            out.unknown_conversations.append(conversation_id)
        elif not record.active:
            out.inactive_conversations.append(conversation_id)
        else:
            out.items.append(item(conversation_id, record.tenant_id))
    for user_id in note.users:
        known = await references.for_user(user_id, active_only=False)
        personal = [r for r in known if r.conversation_type == "personal" and r.active]
        if personal:
            out.items.append(item(personal[0].conversation_id, personal[0].tenant_id))
        elif known:
            out.items.append(item(None, known[0].tenant_id, user_id))
        else:
            out.unknown_users.append(user_id)
    return out


Enqueue = Callable[[Sequence[OutboxItem]], Awaitable[Sequence[Admission]]]
"""`ProactiveMessages.enqueue`: the policy, then the outbox."""


class NotifyEndpoints:
    """The HTTP side; `enqueue` is where every notification enters the outbox (policy included)."""

    def __init__(self, token: str, references: ConversationReferences, store: OutboxStore, enqueue: Enqueue,
                 now: Callable[[], float]) -> None:
        self._token = token.encode()
        self._references = references
        self._store = store
        self._enqueue = enqueue
        self._now = now

    def refuse(self, request: web.Request) -> web.Response | None:
        """None when the request carries the right Bearer token, else the answer to give."""
        if not self._token:
            return error(503, "NotifyDisabled", "the notify API is off: set NOTIFY_TOKEN to enable it")
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            return error(401, "Unauthorized", "missing or wrong Bearer token", **{"WWW-Authenticate": "Bearer"})
        return None

    async def post(self, request: web.Request) -> web.Response:
        refused = self.refuse(request)
        if refused is not None:
            return refused
        body = await JsonBody.read(request)
        if body.refusal is not None:
            return body.refusal
        try:
            note = parse_notification(body.value, self._now())
        except BadRequest as exc:
            return field_error(exc.field, str(exc))
        resolved = await resolve_targets(note, self._references)
        results = await self._enqueue(resolved.items)
        return web.json_response(
            {
                "queued": sum(1 for r in results if r.created and r.decision.action == "deliver"),
                "held": sum(1 for r in results if r.created and r.decision.action == "hold"),
                "muted": sum(1 for r in results if r.created and r.decision.action == "drop"),
                "duplicates": sum(1 for r in results if not r.created),
                "ids": [r.id for r in results],
                "unknown": {"users": resolved.unknown_users, "conversations": resolved.unknown_conversations},
                "inactive": {"conversations": resolved.inactive_conversations},
            },
            status=202,
        )

    async def get(self, request: web.Request) -> web.Response:
        refused = self.refuse(request)
        if refused is not None:
            return refused
        try:
            row_id = int(request.match_info["id"])
        except ValueError:
            return error(400, "BadRequest", "id must be a number")
        row = await self._store.get(row_id)
        if row is None:
            return error(404, "NotFound", f"no message {row_id}")
        return web.json_response(row.public())
