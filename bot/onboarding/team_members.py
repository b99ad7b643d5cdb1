"""WELCOME_TEAM_MEMBERS: greet every member of a team 1:1, paging through the roster (a scheduler job)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from bot.delivery.proactive import ProactiveMessages
from dialogs.welcome_card import InstallContext, welcome_payload
from scheduler.jobs import Job
from state.outbox import OutboxItem
from state.references import ConversationRecord, ConversationReferences

log = logging.getLogger(__name__)

WELCOME_TEAM_MEMBERS = "welcome.team_members"


@dataclass(frozen=True)
class Member:
    """One roster entry: Teams user id, AAD object id, display name, tenant."""

    id: str
    aad_object_id: str | None = None
    name: str | None = None
    tenant_id: str | None = None


class Roster(Protocol):
    """Who is in a team (bot/teams/roster.py pages Teams' roster, 100 at a time)."""

    async def team_members(self, record: ConversationRecord, team_id: str) -> list[Member]: ...


class TeamMemberWelcome:
    """Queues one welcome per team member (but the bot) through the outbox."""

    def __init__(self, roster: Roster, references: ConversationReferences, proactive: ProactiveMessages,
                 bot_name: str) -> None:
        self._roster = roster
        self._references = references
        self._proactive = proactive
        self._bot_name = bot_name

    async def __call__(self, job: Job) -> None:
        conversation_id = str(job.payload["conversation_id"])
        record = await self._references.get(conversation_id)
        if record is None or not record.active:
            log.info("not welcoming team members of %s: the bot is no longer there", conversation_id)
            return
        team_id = str(job.payload.get("team_id") or conversation_id)
        members = [m for m in await self._roster.team_members(record, team_id) if m.id != record.bot_id]
        await self._references.add_members(conversation_id, [(m.id, m.aad_object_id, m.name) for m in members])
        where = InstallContext("member", job.payload.get("installer"), job.payload.get("team"))
        items = [
            OutboxItem(payload=welcome_payload(self._bot_name, where), target_user_id=member.id,
                       tenant_id=member.tenant_id or record.tenant_id, category="welcome",
                       dedup_key=f"welcome-member:{conversation_id}:{member.id}")
            for member in members
        ]
        await self._proactive.enqueue(items)
        log.info("queued %d team member welcome(s) for %s", len(items), conversation_id)
