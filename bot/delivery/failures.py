"""What a failed send means for the message: retry later, the conversation is gone, or drop it.

SDK-free, so the delivery worker can decide without knowing how the Bot Connector was called;
`bot/teams/sender.py` turns every connector error into one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["retry", "gone", "drop", "park"]


@dataclass
class SendFailure(Exception):
    """A send that did not succeed. `action`: retry later, the conversation is gone, drop the message, or park it
    (held, `message` as its note, until what it waits for is done: an install for a new person, bot/reach).

    `attempted=False` means Teams was never asked (e.g. the bot had no token yet): the retry does not use
    up one of the message's bounded attempts, so an identity-service outage fails no message."""

    action: Action
    status: int | None
    code: str
    message: str
    retry_after: float | None = None
    attempted: bool = True

    def __str__(self) -> str:
        return f"{self.status or '-'} {self.code}: {self.message}"
