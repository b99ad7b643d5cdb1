"""What /api/notify asks of bot/reach: is the bot in a team, and the reach part of a batch's status."""

from __future__ import annotations

from typing import Any

from state.reach import ReachStore
from state.references import ConversationReferences


class ReachTargets:
    """Implements `bot.api.notify.Reach`."""

    def __init__(self, references: ConversationReferences, reach: ReachStore) -> None:
        self._references = references
        self._reach = reach

    async def knows_team(self, team_id: str) -> bool:
        return await self._references.team(team_id) is not None

    async def batch_view(self, batch_id: str) -> dict[str, Any]:
        """`reach`: the batch's rows by their person's step (only when it has any)."""
        steps = await self._reach.batch_steps(batch_id)
        return {"reach": steps} if steps else {}
