"""POST /api/messages: Teams (or the Playground) delivers activities here.

A thin translator in the spirit of bolt-python's aiohttp adapter: check the HTTP envelope (content type,
size, strict JSON) and the fields of the activity the bot relies on (`ActivityEnvelope`: a 400 names the
field), then hand the raw activity and the Authorization header to a `TurnProcessor` (the Bot Framework
side, bot/teams/turns.py), which authenticates and runs the turn.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Protocol

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, ValidationError, ValidationInfo

from bot.access import AllowedTenants, activity_refusal
from bot.metrics import Metrics
from bot.service_urls import ServiceUrlHosts
from bot.validation import check_id, check_optional_id, check_service_url
from state.db import interactive

from .errors import describe, error, parse_json

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
LOCAL = "local"  # validation context: True while the bot runs without MicrosoftAppId (http loopback allowed)


def service_url(value: str, info: ValidationInfo) -> str:
    """Where replies to this activity go: an absolute https URL (`bot.validation.check_service_url`)."""
    return check_service_url(value, local=bool(info.context and info.context.get(LOCAL)))


def iso_datetime(value: str) -> str:
    """An ISO-8601 date-time, as the SDK parses `timestamp`, `localTimestamp` and `expiration`."""
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("must be an ISO-8601 date-time such as 2026-01-31T09:00:00.000Z") from None
    return value


NonEmpty = Annotated[StrictStr, Field(min_length=1)]
Id = Annotated[StrictStr, AfterValidator(check_id)]
OptionalId = Annotated[StrictStr, AfterValidator(check_optional_id)]
DateTime = Annotated[StrictStr, AfterValidator(iso_datetime)]


class _Open(BaseModel):
    """Fields the bot reads are typed; anything else an activity carries passes through untouched."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=False)


class Account(_Open):
    id: Id
    name: StrictStr | None = None
    aadObjectId: OptionalId | None = None


class Conversation(_Open):
    id: Id
    conversationType: StrictStr | None = None
    tenantId: OptionalId | None = None
    isGroup: bool | None = None


class NamedId(_Open):
    id: OptionalId | None = None
    name: StrictStr | None = None


class TeamsChannelData(_Open):
    """Teams' channelData: tenant, team, channel and event type (read by the bot and the SDK)."""

    tenant: NamedId | None = None
    team: NamedId | None = None
    channel: NamedId | None = None
    eventType: StrictStr | None = None
    settings: dict[str, Any] | None = None


class ActivityEnvelope(_Open):
    """What every inbound activity must be before the SDK sees it. Wrong types in these fields would fail
    the turn (or be stored and replied to) instead of being refused."""

    type: NonEmpty
    id: OptionalId | None = None
    serviceUrl: Annotated[StrictStr, AfterValidator(service_url)]
    channelId: StrictStr | None = None
    conversation: Conversation
    from_: Account = Field(alias="from")
    recipient: Account | None = None
    name: StrictStr | None = None
    text: StrictStr | None = None
    action: StrictStr | None = None
    replyToId: OptionalId | None = None
    locale: StrictStr | None = None
    localTimezone: StrictStr | None = None
    timestamp: DateTime | None = None
    localTimestamp: DateTime | None = None
    expiration: DateTime | None = None
    textFormat: StrictStr | None = None
    channelData: TeamsChannelData | None = None
    membersAdded: list[Account] | None = None
    membersRemoved: list[Account] | None = None
    attachments: list[dict[str, Any]] | None = None
    entities: list[dict[str, Any]] | None = None
    reactionsAdded: list[dict[str, Any]] | None = None
    reactionsRemoved: list[dict[str, Any]] | None = None


def check_activity(body: Any, *, local: bool = False) -> tuple[str, str] | None:
    """None when `body` is an activity the bot can process; else (field, message). `local`: the bot runs
    without MicrosoftAppId, so a loopback http serviceUrl (the Playground's) is fine."""
    if not isinstance(body, dict):
        return "body", "body must be a JSON object (an activity)"
    try:
        ActivityEnvelope.model_validate(body, context={LOCAL: local})
    except ValidationError as exc:
        field, message = describe(exc)
        return field, f"activity {message}" if message != "unknown field" else message
    return None


@dataclass(frozen=True)
class TurnAnswer:
    """What to answer Teams: a status and, for invokes, a JSON body."""

    status: int = 200
    body: Any = None
    has_body: bool = False
    retry_after: int | None = None  # seconds (with a 503: the activity was not processed; send it again)


class TurnRefused(Exception):
    """The activity is not processed: `status` 400 (not a valid activity) or 401 (not authenticated)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class TurnProcessor(Protocol):
    """Runs one inbound activity; raises TurnRefused for input it will not process."""

    async def process(self, body: dict[str, Any], auth_header: str) -> TurnAnswer: ...


def _outcome(status: int) -> str:
    if status < 300:
        return "ok"
    return {401: "unauthorized", 403: "forbidden", 501: "not_implemented", 503: "unavailable"}.get(
        status, "refused" if status < 500 else "error")


class MessagesEndpoint:
    def __init__(self, turns: TurnProcessor, metrics: Metrics | None = None, *, local: bool = False,
                 service_urls: ServiceUrlHosts | None = None, tenants: AllowedTenants | None = None) -> None:
        self._turns = turns
        self._metrics = metrics or Metrics()
        self._local = local  # no MicrosoftAppId: http serviceUrls of loopback hosts are accepted
        self._service_urls = service_urls  # SERVICE_URL_HOSTS (auth on): where the bot's token may go
        self._tenants = tenants or AllowedTenants()

    async def __call__(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        kind = ["unknown"]  # the activity's type, once the body is read (for the metrics)
        with interactive():  # someone waits for this answer: its statements go before background work
            response = await self._process(request, kind)
        self._metrics.turn(kind[0], _outcome(response.status), time.perf_counter() - started)
        return response

    async def _process(self, request: web.Request, kind: list[str]) -> web.Response:
        if request.content_type != "application/json":
            return error(415, "UnsupportedMediaType", "Content-Type must be application/json")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return error(413, "PayloadTooLarge", f"activity body is over {MAX_BODY_BYTES} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error(413, "PayloadTooLarge", f"activity body is over {MAX_BODY_BYTES} bytes")
        try:
            body = parse_json(raw)
        except ValueError as exc:
            return error(400, "BadJson", str(exc))
        if isinstance(body, dict) and isinstance(body.get("type"), str):
            kind[0] = body["type"]
        problem = check_activity(body, local=self._local)
        if problem is None and self._service_urls is not None:
            refusal = self._service_urls.refusal(body["serviceUrl"])
            if refusal is not None:
                self._metrics.service_url_refused("inbound")
                level = logging.WARNING if self._service_urls.first_refusal(body["serviceUrl"]) else logging.DEBUG
                log.log(level, "refused an activity whose serviceUrl %s the bot's token may not go to: %s",
                        body["serviceUrl"][:200], refusal)
                problem = ("serviceUrl", f"serviceUrl: {refusal}")
        if problem is not None:
            return web.json_response(
                {"error": {"code": "BadActivity", "field": problem[0], "message": problem[1]}}, status=400)
        forbidden = activity_refusal(body, self._tenants)  # Teams only, allowed tenants only (bot/access.py)
        if forbidden is not None:
            code, field, message = forbidden
            return web.json_response({"error": {"code": code, "field": field, "message": message}}, status=403)
        try:
            answer = await self._turns.process(body, request.headers.get("Authorization", ""))
        except TurnRefused as refused:
            headers = {"WWW-Authenticate": "Bearer"} if refused.status == 401 else {}
            return error(refused.status, refused.code, refused.message, **headers)
        retry = {"Retry-After": str(answer.retry_after)} if answer.retry_after is not None else None
        if answer.has_body:
            return web.json_response(answer.body, status=answer.status, headers=retry)
        return web.Response(status=answer.status, headers=retry)
