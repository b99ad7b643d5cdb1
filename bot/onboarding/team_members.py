"""WELCOME_TEAM_MEMBERS: greet every member of a team 1:1, one roster page per run of a scheduler job.

A team has up to 25,000 members: each run reads one page (100), queues its welcomes and schedules the next run
with the page's continuation token, so memory holds a page, not the roster. A run that dies before scheduling
the next is run again (its lease expires) from the same token; each welcome's dedup key makes that harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from bot.delivery.proactive import ProactiveMessages
from dialogs.welcome_card import InstallContext, welcome_payload
from scheduler.jobs import Job
from scheduler.scheduler import Scheduler
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
    """Who is in a team, a page at a time (bot/teams/roster.py: Teams' paged roster)."""

    async def team_members_page(self, record: ConversationRecord, team_id: str,
                                token: str | None) -> tuple[list[Member], str | None]: ...



class TeamMemberWelcome:
    """Queues one welcome per team member (but the bot) through the outbox."""

    def __init__(self, roster: Roster, references: ConversationReferences, proactive: ProactiveMessages,
                 bot_name: str, scheduler: Scheduler) -> None:
        self._roster = roster
        self._scheduler = scheduler
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
        after = job.payload.get("token")
        page, token = await self._roster.team_members_page(record, team_id, after if isinstance(after, str) else None)
        members = [m for m in page if m.id != record.bot_id]
        await self._references.add_members(conversation_id, [(m.id, m.aad_object_id, m.name) for m in members])
        where = InstallContext("member", job.payload.get("installer"), job.payload.get("team"))
        items = [
            OutboxItem(payload=welcome_payload(self._bot_name, where), target_user_id=member.id,
                       tenant_id=member.tenant_id or record.tenant_id, category="welcome",
                       dedup_key=f"welcome-member:{conversation_id}:{member.id}")
            for member in members
        ]
        await self._proactive.enqueue(items)
        log.info("queued %d team member welcome(s) for %s%s", len(items), conversation_id,
                 "; more to come" if token else "")
        if token:
            await self._scheduler.schedule_in(0, WELCOME_TEAM_MEMBERS, {**job.payload, "token": token},
                                              key=welcome_members_key(conversation_id))


def welcome_members_key(conversation_id: str) -> str:
    """The one welcome job of a team's members (scheduling it again replaces it)."""
    return f"welcome-members:{conversation_id}"
