"""The `Analyses` port until long-running analyses land: says so plainly instead of pretending."""

from __future__ import annotations

from dialogs.ports import UserRef


class NotYetAnalyses:
    """Analyses are not available in this version; the dialogs tell the user, nothing is started."""

    async def start(self, user: UserRef, conversation_id: str, product: str) -> str:
        return "Analyses aren't available in this version yet. You can `watch` a price meanwhile."

    async def running(self, user_id: str) -> list[str]:
        return []

    async def cancel(self, user_id: str, product: str | None = None) -> int:
        return 0
