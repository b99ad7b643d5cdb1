"""WELCOME_TEAM_MEMBERS: greet every member of a team 1:1, paging through the roster (a scheduler job)."""

from __future__ import annotations

import logging

from botbuilder.core import TurnContext
from botbuilder.core.teams import TeamsInfo
from botbuilder.integration.aiohttp import CloudAdapter

from dialogs.welcome import InstallContext, welcome_payload
from scheduler.jobs import Job
from state.outbox import OutboxItem
from state.references import ConversationReferences

from .proactive import ProactiveMessages
from .references import reference_from_record

log = logging.getLogger(__name__)


class TeamMemberWelcome:
    """Pages the team roster (100 per page) and queues one welcome per member through the outbox."""

    def __init__(self, adapter: CloudAdapter, references: ConversationReferences, proactive: ProactiveMessages,
                 app_id: str, bot_name: str) -> None:
        self._adapter = adapter
        self._references = references
        self._proactive = proactive
        self._app_id = app_id
        self._bot_name = bot_name

    async def __call__(self, job: Job) -> None:
        conversation_id = str(job.payload["conversation_id"])
        record = await self._references.get(conversation_id)
        if record is None or not record.active:
            log.info("not welcoming team members of %s: the bot is no longer there", conversation_id)
            return
        members: list[tuple[str, str | None, str | None, str | None]] = []

        team_id = str(job.payload.get("team_id") or conversation_id)

        async def collect(turn_context: TurnContext) -> None:
            token = None
            while True:
                page = await TeamsInfo.get_paged_team_members(turn_context, team_id, token, 100)
                members.extend((m.id, getattr(m, "aad_object_id", None), m.name, getattr(m, "tenant_id", None))
                               for m in page.members or [] if m.id and m.id != record.bot_id)
                token = page.continuation_token
                if not token:
                    break

        await self._adapter.continue_conversation(reference_from_record(record), collect, self._app_id)
        await self._references.add_members(conversation_id, [(m, aad, name) for m, aad, name, _ in members])
        where = InstallContext("member", job.payload.get("installer"), job.payload.get("team"))
        items = [
            OutboxItem(payload=welcome_payload(self._bot_name, where), target_user_id=member_id,
                       tenant_id=tenant or record.tenant_id, category="welcome",
                       dedup_key=f"welcome-member:{conversation_id}:{member_id}")
            for member_id, _, _, tenant in members
        ]
        await self._proactive.enqueue(items)
        log.info("queued %d team member welcome(s) for %s", len(items), conversation_id)
