"""POST /api/notify and GET /api/notify/{id}: other systems ask the bot to message people.

The request is validated field by field (400 naming the field) and becomes one broadcast
(bot/api/broadcasts.py): what is said is stored once, its targets resolved against the conversation
references and written as small outbox rows, page by page; the delivery worker does the rest.
A channel is one target (a new post in it), however many of its threads the bot has seen; a thread's
own id (`…;messageid=…`) posts a reply in that thread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from aiohttp import web
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictStr,
    ValidationError,
)

from bot.access import AllowedTenants
from bot.graph.client import is_guid
from bot.notices.acknowledge import with_acknowledge
from bot.validation import check_id, check_printable
from state.broadcasts import Broadcast
from state.model import conversation_key
from state.outbox import PRIORITIES, OutboxItem, OutboxStore
from state.references import ConversationReferences

from .errors import JsonBody, describe, error, field_error, row_id
from .guards import TokenGate

if TYPE_CHECKING:
    from bot.notices.lifecycle import NoticeLifecycle

    from .broadcasts import Broadcasts
    from .dry_run import DryRun

MAX_TARGETS = 10_000
MAX_GROUPS = 100
MAX_MESSAGE_BYTES = 28_000  # Teams caps a message at about 28 KB
MAX_LEAD_S = 366 * 86_400  # a notice may be scheduled up to a year ahead
BATCH_ID = re.compile(r"[0-9a-f]{32}")


class BatchLookup(Protocol):
    async def get(self, public_id: str) -> Broadcast | None: ...


async def find_batch(request: web.Request, refuse: Callable[[web.Request], web.Response | None],
                     broadcasts: BatchLookup) -> Broadcast | web.Response:
    """The batch a `/api/notify/batches/{batchId}…` route names, or the answer that refuses the request
    (no token: 401; not a batch id: 400; no such batch: 404)."""
    refused = refuse(request)
    if refused is not None:
        return refused
    batch_id = request.match_info["batchId"]
    if not BATCH_ID.fullmatch(batch_id):
        return error(400, "BadRequest", "batchId must be the 32 hexadecimal digits POST /api/notify returned")
    batch = await broadcasts.get(batch_id)
    if batch is None:
        return error(404, "NotFound", f"no batch {batch_id}")
    return batch


class BadRequest(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be blank")
    return text


def _adaptive_card(card: dict[str, Any]) -> dict[str, Any]:
    if card.get("type") != "AdaptiveCard":
        raise ValueError('must be an Adaptive Card object with "type": "AdaptiveCard"')
    return card


def _aware_datetime(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError("must be an ISO-8601 date-time string, e.g. 2026-12-01T09:00:00Z")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an ISO-8601 date-time, e.g. 2026-12-01T09:00:00Z") from None
    if when.tzinfo is None:
        raise ValueError("must include a time zone, e.g. 2026-12-01T09:00:00Z")
    return when


Id = Annotated[StrictStr, AfterValidator(check_id)]  # printable, `;messageid=` digits (bot/validation.py)
Ids = Annotated[list[Id], Field(min_length=1, max_length=MAX_TARGETS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _guid(text: str) -> str:
    if not is_guid(text):
        raise ValueError("must be an Entra tenant id (a GUID)")
    return text.lower()


def _group(text: str) -> str:
    if not is_guid(text):
        raise ValueError("must be an Entra group id (a GUID)")
    return text.lower()


class Recipients(_Strict):
    """`to`: exactly one of everyone, some users (optionally of one tenant), some conversations, some channels
    (one new post in each), a team (each member 1:1), the members of some Entra groups (of one tenant)."""

    all: Literal[True] | None = None
    users: Ids | None = None
    tenantId: Annotated[StrictStr, AfterValidator(_guid)] | None = None
    conversations: Ids | None = None
    channels: Ids | None = None
    team: Id | None = None
    groups: Annotated[list[Annotated[StrictStr, AfterValidator(_group)]],
                      Field(min_length=1, max_length=MAX_GROUPS)] | None = None
    includeGuests: StrictBool | None = None


class NotifyRequest(_Strict):
    """The body of POST /api/notify, as typed values (field names as in the JSON)."""

    to: Recipients
    text: Annotated[StrictStr, AfterValidator(_not_blank)] | None = None
    card: Annotated[dict[str, Any], AfterValidator(_adaptive_card)] | None = None
    dedupKey: Annotated[StrictStr, AfterValidator(lambda key: check_printable(key, 200))] | None = None
    priority: Literal["normal", "urgent"] = "normal"
    expiresAt: Annotated[datetime, PlainValidator(_aware_datetime)] | None = None
    acknowledge: StrictBool = False
    sendAt: Annotated[datetime, PlainValidator(_aware_datetime)] | None = None
    dryRun: StrictBool = False


@dataclass
class Notification:
    """A validated request."""

    payload: dict[str, Any]
    target_all: bool = False
    users: list[str] = field(default_factory=list)
    conversations: list[str] = field(default_factory=list)
    channels_only: bool = False  # `to.channels`: each conversation must be a channel the bot is in
    dedup_key: str | None = None
    priority: int = 0
    expires_at: float | None = None
    acknowledge: bool = False  # an Acknowledge button (bot/notices/acknowledge.py), added once the batch id is known
    send_at: float | None = None  # scheduled: written and sent from then on (minute precision)
    dry_run: bool = False  # only say whom it would reach (bot/api/dry_run.py)
    tenant_id: str | None = None  # users not known yet are AAD object ids of this tenant (bot/reach)
    team: str | None = None  # every member of this team, 1:1 (bot/reach/team.py)
    groups: list[str] = field(default_factory=list)  # the members of these Entra groups (bot/reach/groups.py)
    include_guests: bool = False  # groups: guests and disabled accounts too


def parse_notification(body: Any, now: float) -> Notification:
    """Validate a notify request body; raises BadRequest naming the offending field."""
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    try:
        request = NotifyRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(*describe(exc)) from None
    to = request.to
    if sum(x is not None for x in (to.all, to.users, to.conversations, to.channels, to.team, to.groups)) != 1:
        raise BadRequest("to", 'must be exactly one of {"all": true}, {"users": [...]} (with "tenantId" to reach '
                               'people the bot has not met), {"conversations": [...]}, {"channels": [...]}, '
                               '{"team": "<team id>"}, {"groups": [...], "tenantId": "<tenant id>"}')
    if to.tenantId is not None and to.users is None and to.groups is None:
        raise BadRequest("to.tenantId", 'goes with "users" or "groups" only')
    if to.groups is not None and to.tenantId is None:
        raise BadRequest("to.tenantId", 'is required with "groups" (the tenant of the groups)')
    if to.includeGuests is not None and to.groups is None:
        raise BadRequest("to.includeGuests", 'goes with "groups" only')
    for n, channel in enumerate(to.channels or ()):
        if ";messageid=" in channel:
            raise BadRequest(f"to.channels.{n}", "is a thread of a channel: give the channel's own id")
    note = Notification(payload={}, target_all=to.all is True, users=list(dict.fromkeys(to.users or ())),
                        conversations=list(dict.fromkeys(to.conversations or to.channels or ())),
                        channels_only=to.channels is not None, tenant_id=to.tenantId, team=to.team,
                        groups=list(dict.fromkeys(to.groups or ())), include_guests=to.includeGuests is True)
    if request.text is None and request.card is None:
        raise BadRequest("text", "give a text, a card, or both")
    payload: dict[str, Any] = {"type": "message"}
    if request.text is not None:
        payload["text"] = request.text
        payload["textFormat"] = "markdown"
    if request.card is not None:
        payload["attachments"] = [{"contentType": "application/vnd.microsoft.card.adaptive", "content": request.card}]
    sized = with_acknowledge(payload, "0" * 32) if request.acknowledge else payload
    if len(json.dumps(sized).encode()) > MAX_MESSAGE_BYTES:
        raise BadRequest("text" if request.card is None else "card",
                         f"message is over Teams' {MAX_MESSAGE_BYTES} bytes")
    note.payload = payload
    note.dedup_key = request.dedupKey
    note.acknowledge = request.acknowledge
    note.dry_run = request.dryRun
    note.priority = PRIORITIES[request.priority]
    if request.expiresAt is not None:
        expires = request.expiresAt.timestamp()
        if expires <= now:
            raise BadRequest("expiresAt", "is already in the past")
        note.expires_at = expires
    if request.sendAt is not None:
        at = request.sendAt.timestamp()
        if at > now + MAX_LEAD_S:
            raise BadRequest("sendAt", "is more than a year ahead")
        note.send_at = at - at % 60  # minute precision; a time already past goes at once
        if note.expires_at is not None and note.send_at >= note.expires_at:
            raise BadRequest("sendAt", "must be before expiresAt")
    return note


@dataclass
class Resolved:
    items: list[OutboxItem] = field(default_factory=list)
    unknown_users: list[str] = field(default_factory=list)
    unknown_conversations: list[str] = field(default_factory=list)
    inactive_conversations: list[str] = field(default_factory=list)


def recipient(note: Notification, conversation_id: str | None, tenant_id: str | None, user_id: str | None = None,
              *, broadcast_id: int | None = None, undecided: bool = False) -> OutboxItem:
    """The outbox item for one target of a notification (of broadcast `broadcast_id`)."""
    target = conversation_id or f"user:{user_id}"
    return OutboxItem(
        payload=note.payload, conversation_id=conversation_id, target_user_id=user_id, tenant_id=tenant_id,
        dedup_key=f"{note.dedup_key}|{target}" if note.dedup_key else None, category="notification",
        priority=note.priority, expires_at=note.expires_at, broadcast_id=broadcast_id, undecided=undecided,
    )


async def resolve_targets(note: Notification, references: ConversationReferences,
                          tenants: AllowedTenants | None = None, *, broadcast_id: int | None = None,
                          undecided: bool = False) -> Resolved:
    """One outbox item per reachable target of the listed users and conversations (everyone: only a first
    page; a broadcast pages through them); the rest reported (a target in a tenant the bot does not serve,
    ALLOWED_TENANTS, is unknown)."""
    out = Resolved()
    allows = (tenants or AllowedTenants()).allows

    def item(conversation_id: str | None, tenant_id: str | None, user_id: str | None = None) -> OutboxItem:
        return recipient(note, conversation_id, tenant_id, user_id, broadcast_id=broadcast_id, undecided=undecided)

    if note.target_all:
        out.items = [item(conversation_id, tenant_id) for conversation_id, tenant_id in await references.reachable()
                     if allows(tenant_id)]
    for conversation_id in note.conversations:
        record = await references.get(conversation_key(conversation_id))
        if record is None or not allows(record.tenant_id) or (
                note.channels_only and record.conversation_type != "channel"):
            out.unknown_conversations.append(conversation_id)
        elif not record.active:
            out.inactive_conversations.append(conversation_id)
        else:
            out.items.append(item(conversation_id, record.tenant_id))
    for user_id in note.users:
        known = [r for r in await references.for_user(user_id, active_only=False) if allows(r.tenant_id)]
        personal = [r for r in known if r.conversation_type == "personal" and r.active]
        if personal:
            out.items.append(item(personal[0].conversation_id, personal[0].tenant_id))
        elif known:
            out.items.append(item(None, known[0].tenant_id, user_id))
        elif note.tenant_id is not None and is_guid(user_id) and allows(note.tenant_id):  # new there: bot/reach
            out.items.append(item(None, note.tenant_id, user_id))
        else:
            out.unknown_users.append(user_id)
    return out


class Reach(Protocol):
    """What bot/reach adds to a batch's status, and whether the bot is in a team (bot/reach/targets.py)."""

    async def knows_team(self, team_id: str) -> bool: ...

    async def batch_view(self, batch_id: str) -> dict[str, Any]: ...


class NotifyEndpoints:
    """The HTTP side; `broadcasts` accepts each request as one broadcast (policy and outbox behind it)."""

    def __init__(self, token: str, store: OutboxStore, broadcasts: Broadcasts, now: Callable[[], float],
                 lifecycle: NoticeLifecycle | None = None, dry_run: DryRun | None = None, *,
                 reach: Reach | None = None) -> None:
        self._reach = reach
        self._gate = TokenGate(token, "NOTIFY_TOKEN", "Notify")
        self._store = store
        self._broadcasts = broadcasts
        self._now = now
        self._lifecycle = lifecycle  # scheduled, sending, cancelled, finished (bot/notices/lifecycle.py)
        self._dry_run = dry_run

    def refuse(self, request: web.Request) -> web.Response | None:
        """None when the request carries the right Bearer token, else the answer to give."""
        return self._gate.refuse(request)

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
        if note.team is not None and (self._reach is None or not await self._reach.knows_team(note.team)):
            return web.json_response({"error": {"code": "NotFound", "field": "to.team", "message": (
                f"to.team: the bot is not in team {note.team[:200]!r} (or has not heard from it)")}}, status=404)
        if note.dry_run:  # nothing is stored or sent
            if self._dry_run is None:
                return error(501, "NotImplemented", "dryRun is not available here")
            return web.json_response(await self._dry_run.preview(note))
        accepted = await self._broadcasts.accept(note)
        return web.json_response(accepted.answer(), status=202)

    async def get(self, request: web.Request) -> web.Response:
        refused = self.refuse(request)
        if refused is not None:
            return refused
        wanted = row_id(request.match_info["id"])
        if wanted is None:
            return error(400, "BadRequest", "id must be a whole number from 1 to 9223372036854775807")
        row = await self._store.get(wanted)
        if row is None:
            return error(404, "NotFound", f"no message {wanted}")
        return web.json_response(row.public())

    async def batch(self, request: web.Request) -> web.Response:
        """GET /api/notify/batches/{batchId}: how far one POST /api/notify got."""
        batch = await find_batch(request, self.refuse, self._broadcasts)
        if isinstance(batch, web.Response):
            return batch
        notice = await self._lifecycle.status(batch) if self._lifecycle is not None else {"state": batch.state}
        return web.json_response({
            "batchId": batch.public_id,
            **notice,
            "expansion": "expanded" if batch.expanded_at is not None else (
                "expanding" if batch.state == "expanding" else None),
            "requested": batch.requested,
            "targets": batch.targets,
            "duplicates": max(0, batch.requested - batch.targets),
            "unknown": batch.unknown,
            "inactive": batch.inactive,
            "counts": batch.counts,
            "startedAt": _iso(batch.created_at),
            "expandedAt": _iso(batch.expanded_at) if batch.expanded_at is not None else None,
            "finishedAt": _iso(batch.last_change) if batch.finished else None,
            "finished": batch.finished,
            "acknowledged": batch.acknowledged,
            # a notice to everyone is written from the references: conversations, none of them waits on bot/reach
            # (and the reach view reads every row of the batch: a million for a whole organisation)
            **(await self._reach.batch_view(batch.public_id)
               if self._reach is not None and not batch.audience.get("all") else {}),
        })


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
