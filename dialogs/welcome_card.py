"""The welcome card: why you are getting it, what the bot offers, what to do next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .cards import command_button

CARD = "application/vnd.microsoft.card.adaptive"


@dataclass(frozen=True)
class InstallContext:
    """Where and by whom the bot was added."""

    scope: str  # personal | groupChat | team | member | reached (installed for you by the bot, bot/reach)
    installer: str | None = None
    team: str | None = None
    channel: str | None = None


def _why(bot_name: str, where: InstallContext) -> str:
    added = f"{where.installer} added {bot_name}" if where.installer else f"{bot_name} was added"
    if where.scope == "team":
        place = f"the **{where.team}** team" if where.team else "this team"
        channel = f" (channel **{where.channel}**)" if where.channel else ""
        return f"{added} to {place}{channel}, so I'm introducing myself here."
    if where.scope == "groupChat":
        return f"{added} to this group chat, so I'm introducing myself."
    if where.scope == "member":
        place = f"the **{where.team}** team" if where.team else "a team you're in"
        return f"{added} to {place}; I'm saying hello once, here in our 1:1 chat."
    if where.scope == "reached":
        return (f"Your organisation installed {bot_name} for you, so that its notices reach you here; "
                "the first one follows this message.")
    return f"You installed {bot_name}. Here's what I can do for you."


def welcome_payload(bot_name: str, where: InstallContext) -> dict[str, Any]:
    """The activity JSON of the welcome message (one Adaptive Card)."""
    body = [
        {"type": "TextBlock", "text": f"👋 Hi, I'm {bot_name}", "weight": "Bolder", "size": "Medium", "wrap": True},
        {"type": "TextBlock", "text": _why(bot_name, where), "wrap": True},
        {"type": "TextBlock", "text": "What I do", "weight": "Bolder", "wrap": True, "spacing": "Medium"},
        {"type": "FactSet", "facts": [
            {"title": "Price watching", "value": "Tell me a product and a condition (`watch gadget below 10`); "
                                                  "I message you when the price moves."},
            {"title": "Analyses", "value": "`analyze gadget` runs in the background with progress updates; "
                                             "keep chatting, I'll send the result."},
            {"title": "Quiet when busy", "value": "I hold notifications while we're in the middle of something; "
                                                    "`settings` sets quiet hours or a daily digest, and `mute` "
                                                    "pauses them."},
        ]},
        {"type": "TextBlock", "text": "Next: watch a price, or see all commands.", "wrap": True, "spacing": "Medium"},
    ]
    card = {
        "type": "AdaptiveCard", "$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "version": "1.5",
        "body": body,
        "actions": [command_button("Watch a price", "watch"), command_button("Help", "help")],
    }
    return {
        "type": "message",
        "summary": f"Welcome to {bot_name}",
        "attachments": [{"contentType": CARD, "content": card}],
    }
