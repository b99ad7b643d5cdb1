"""`"dryRun": true` on POST /api/notify: whom the notice would reach, and nothing sent or stored.

`requested` counts the reachable targets the request resolves to now (everyone: the active conversations of
the tenants served; lists: each listed user or conversation the bot can reach), `sample` shows up to ten of
them, and the unknown and inactive ones are listed as the real answer would list them.
"""

from __future__ import annotations

from typing import Any

from bot.access import AllowedTenants
from bot.metrics import Metrics
from state.notices import Audiences
from state.references import ConversationReferences

from .notify import Notification, resolve_targets

SAMPLE = 10


class DryRun:
    def __init__(self, audiences: Audiences, references: ConversationReferences, tenants: AllowedTenants,
                 metrics: Metrics) -> None:
        self._audiences = audiences
        self._references = references
        self._tenants = tenants
        self._metrics = metrics

    async def preview(self, note: Notification) -> dict[str, Any]:
        self._metrics.notice("dry_run")
        answer: dict[str, Any] = {"dryRun": True}
        if note.target_all:
            count, rows = await self._audiences.everyone(self._tenants.names or None, SAMPLE)
            return {**answer, "requested": count, "sample": [
                {"conversationId": r["conversation_id"], "tenantId": r["tenant_id"],
                 "conversationType": r["conversation_type"], "userId": r["user_id"], "aadObjectId": r["user_aad_id"],
                 "name": r["name"]} for r in rows],
                "unknown": {"users": [], "conversations": []}, "inactive": {"conversations": []}}
        if note.groups:  # a group's members are read from Graph only when it is sent
            return {**answer, "requested": None, "sample": [], "note": (
                "groups are not expanded in a dry run: their members are read from Microsoft Graph when it is sent"),
                "unknown": {"users": [], "conversations": []}, "inactive": {"conversations": []}}
        resolved = await resolve_targets(note, self._references, self._tenants)
        return {**answer, "requested": len(resolved.items), "sample": [
            {"conversationId": item.conversation_id, "tenantId": item.tenant_id, "userId": item.target_user_id}
            for item in resolved.items[:SAMPLE]],
            "unknown": {"users": resolved.unknown_users, "conversations": resolved.unknown_conversations},
            "inactive": {"conversations": resolved.inactive_conversations}}
