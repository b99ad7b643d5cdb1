"""Who may call what, without any web framework: Bearer tokens, loopback Host names, Teams-only activities,
allowed tenants. `bot/api/guards.py` applies these to HTTP requests."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any

TEAMS_CHANNEL = "msteams"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
_HOST_HEADER = re.compile(r"(?P<name>localhost|127\.0\.0\.1|\[::1\])(?::(?P<port>[0-9]{1,5}))?", re.IGNORECASE)


def bearer_matches(header: str, secret: str) -> bool:
    """True when `header` is `Bearer <secret>`. Compared in constant time: both sides are hashed first, so
    neither the content nor the length of the secret shows in the time taken. An empty secret matches nothing."""
    if not secret:
        return False
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(hashlib.sha256(presented.strip().encode("utf-8", "surrogateescape")).digest(),
                               hashlib.sha256(secret.encode()).digest())


def loopback_host(header: str | None) -> bool:
    """True for a Host header naming this machine: `localhost`, `127.0.0.1` or `[::1]`, optionally with a port.

    A web page that rebinds its own DNS name to 127.0.0.1 still sends its own name as Host, so checking it
    keeps browsers' pages away from a bot that runs without authentication (local mode)."""
    if not header:
        return False
    match = _HOST_HEADER.fullmatch(header)
    return match is not None and (match["port"] is None or 0 < int(match["port"]) < 65536)


class AllowedTenants:
    """ALLOWED_TENANTS: the Microsoft 365 tenants the bot serves; empty = every tenant.

    With a list, anything without a tenant is refused too (Teams always names the tenant)."""

    def __init__(self, tenants: Iterable[str] = ()) -> None:
        self._tenants = frozenset(t.strip().lower() for t in tenants if t.strip())

    @property
    def restricted(self) -> bool:
        return bool(self._tenants)

    @property
    def names(self) -> frozenset[str]:
        """The tenants served (trimmed, lower case); empty = every tenant."""
        return self._tenants

    def allows(self, tenant_id: str | None) -> bool:
        if not self._tenants:
            return True
        return tenant_id is not None and tenant_id.strip().lower() in self._tenants

    def __repr__(self) -> str:
        return f"AllowedTenants({sorted(self._tenants)!r})"


def activity_tenant(activity: Mapping[str, Any]) -> str | None:
    """The tenant an inbound activity names: `channelData.tenant.id` (what Teams sends), else
    `conversation.tenantId`."""
    channel_data = activity.get("channelData")
    if isinstance(channel_data, dict) and isinstance(channel_data.get("tenant"), dict):
        tenant = channel_data["tenant"].get("id")
        if isinstance(tenant, str) and tenant:
            return tenant
    conversation = activity.get("conversation")
    if isinstance(conversation, dict) and isinstance(conversation.get("tenantId"), str):
        return str(conversation["tenantId"]) or None
    return None


def activity_refusal(activity: Mapping[str, Any], tenants: AllowedTenants) -> tuple[str, str, str] | None:
    """None when the bot serves this activity; else (code, field, message) for a 403.

    Only Teams: Web Chat and Direct Line clients (on by default on every Azure Bot resource) choose `from.id` and
    the tenant freely, and the channel's token only proves which channel signed it."""
    channel = activity.get("channelId")
    if channel != TEAMS_CHANNEL:
        return ("ChannelNotAllowed", "channelId",
                f"channelId must be {TEAMS_CHANNEL!r}: this bot serves Microsoft Teams only")
    if not tenants.allows(activity_tenant(activity)):
        return ("TenantNotAllowed", "channelData.tenant.id", "this bot does not serve that tenant (ALLOWED_TENANTS)")
    return None
