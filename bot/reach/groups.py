"""`{"to": {"groups": [...], "tenantId": …}}`: the users in some Entra groups, nested groups included, 1:1.

A group notice is a broadcast (bot/api/broadcasts.py) whose expansion pages through Graph's
`transitiveMembers/microsoft.graph.user` of each group in turn: each call reads one page, leaves out guests
and disabled accounts (unless `includeGuests`), and writes the members as recipients exactly like the
`{"users": [...], "tenantId"}` target (someone the bot knows through their chat, anyone else reached by
bot/reach), with the cursor (which group, Graph's `@odata.nextLink`) in the same transaction. Each row's dedup
key names the person, so someone in two groups (or re-read after a crash) gets one message. Graph's 429/503
with Retry-After raises `Later`: the job runs again then, from the same cursor. Memory stays flat.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any, Protocol

from bot.access import AllowedTenants
from bot.api.notify import Notification, resolve_targets
from bot.graph.client import GraphError
from state.broadcasts import Broadcast, BroadcastStore
from state.references import ConversationReferences

log = logging.getLogger(__name__)


class GroupGraph(Protocol):
    """One page of a group's transitive user members (bot/graph/client.py)."""

    async def group_members_page(self, tenant_id: str, group_id: str, next_link: str | None = None
                                 ) -> tuple[list[dict[str, Any]], str | None]: ...


class Later(Exception):
    """Graph asked to wait: run the expansion again after `seconds` (the cursor is unchanged)."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds


def wanted(user: dict[str, Any], include_guests: bool) -> bool:
    """A member who gets the notice: guests and disabled accounts only with `includeGuests`."""
    if include_guests:
        return True
    return user.get("userType") != "Guest" and user.get("accountEnabled") is not False


class GroupPages:
    """Writes a group broadcast's recipients, one Graph page per call (see the module docstring)."""

    def __init__(self, graph: GroupGraph, references: ConversationReferences, store: BroadcastStore,
                 tenants: AllowedTenants, *, retry_s: float = 30.0) -> None:
        self._graph = graph
        self._references = references
        self._store = store
        self._tenants = tenants
        self._retry_s = retry_s

    async def next_page(self, broadcast: Broadcast) -> tuple[bool, int]:
        """(done, rows written) for the next page of `broadcast` (audience `{"groups": [...], "tenantId"}`)."""
        groups = [str(g) for g in broadcast.audience.get("groups") or []]
        tenant = str(broadcast.audience.get("tenantId") or "")
        cursor: dict[str, Any] = json.loads(broadcast.cursor) if broadcast.cursor else {"group": 0, "next": None}
        index, link = int(cursor["group"]), cursor.get("next")
        if index >= len(groups) or not self._tenants.allows(tenant):  # ALLOWED_TENANTS: nobody there is a target
            await self._store.write_page(broadcast.id, [], cursor=json.dumps({"group": len(groups), "next": None}),
                                         resolved=0, unknown=0 if index >= len(groups) else len(groups), done=True)
            return True, 0
        try:
            users, link = await self._graph.group_members_page(tenant, groups[index], link)
        except GraphError as exc:
            if exc.retryable:
                raise Later(exc.retry_after if exc.retry_after is not None else self._retry_s, str(exc)) from exc
            log.warning("group notice %s: group %s cannot be read (%s); it is skipped", broadcast.public_id,
                        groups[index], exc)
            users, link = [], None
            unknown = 1
        else:
            unknown = 0
        include_guests = bool(broadcast.audience.get("includeGuests"))
        ids = list(dict.fromkeys(str(u["id"]).lower() for u in users if wanted(u, include_guests)))
        note = Notification(payload=broadcast.payload, users=ids, tenant_id=tenant,
                            dedup_key=broadcast.dedup_key or broadcast.public_id, priority=broadcast.priority,
                            expires_at=broadcast.expires_at)
        resolved = await resolve_targets(note, self._references, self._tenants, broadcast_id=broadcast.id,
                                         undecided=True)
        following: dict[str, Any] = {"group": index, "next": link} if link else {"group": index + 1, "next": None}
        done = not link and index + 1 >= len(groups)
        results, _ = await self._store.write_page(
            broadcast.id, [replace(item, payload={}) for item in resolved.items], cursor=json.dumps(following),
            resolved=len(resolved.items), unknown=unknown + len(resolved.unknown_users), done=done)
        log.info("group notice %s: a page of group %s, %d member(s) written", broadcast.public_id, groups[index],
                 len(resolved.items))
        return done, sum(1 for r in results if r.created)
