"""Team rosters from Teams, paged (100 members per page), for `bot.onboarding`."""

from __future__ import annotations

from botbuilder.core import TurnContext
from botbuilder.core.teams import TeamsInfo
from botbuilder.integration.aiohttp import CloudAdapter

from bot.onboarding.team_members import Member
from state.references import ConversationRecord

from .activities import reference_from_record


class TeamsRoster:
    """Implements `bot.onboarding.team_members.Roster` with the SDK's paged members call."""

    def __init__(self, adapter: CloudAdapter, app_id: str) -> None:
        self._adapter = adapter
        self._app_id = app_id

    async def team_members_page(self, record: ConversationRecord, team_id: str, token: str | None,
                                size: int = 100) -> tuple[list[Member], str | None]:
        """One page of a team's roster and the continuation token of the next (None: that was the last)."""
        found: list[tuple[list[Member], str | None]] = []
        failed: list[BaseException] = []

        async def read(turn_context: TurnContext) -> None:
            try:
                page = await TeamsInfo.get_paged_team_members(turn_context, team_id, token, size)
            except Exception as exc:  # the adapter's turn-error handler would swallow it: hand it to the caller
                failed.append(exc)
                return
            found.append(([Member(m.id, getattr(m, "aad_object_id", None), m.name, getattr(m, "tenant_id", None))
                           for m in page.members or [] if m.id], page.continuation_token or None))

        await self._adapter.continue_conversation(reference_from_record(record), read, self._app_id)
        if failed:
            raise failed[0]
        if not found:
            raise RuntimeError(f"no roster page of team {team_id} came back")
        return found[0]
