"""The commands the bot understands: one catalogue for help text, the Teams manifest and the router."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    description: str
    menu: bool = True
    """Listed in the Teams command menu (at most 10 per scope); every command is in the help."""


# Placeholders are CAPITALS, never <angle brackets>: clients render markdown differently, and the
# Playground shows `&lt;product&gt;` for `<product>` inside code.
COMMANDS: tuple[Command, ...] = (
    Command("help", "help", "What I can do and how to ask for it"),
    Command("watch", "watch PRODUCT below PRICE", "Watch a product's price and alert you when it moves"),
    Command("list", "list", "Show the prices you are watching"),
    Command("unwatch", "unwatch PRODUCT", "Stop watching a product"),
    Command("analyze", "analyze PRODUCT", "Analyse a product's price history; I message you when done"),
    Command("status", "status", "Show analyses that are still running"),
    Command("cancel", "cancel", "Stop what we are in the middle of"),
    Command("settings", "settings", "Your time zone, quiet hours, daily digest and mute"),
    Command("mute", "mute [DURATION]", "Pause notifications, e.g. `mute 2h`, or until you unmute"),
    Command("unmute", "unmute", "Turn notifications back on"),
    Command("quiet", "quiet 22:00-07:00", "Quiet hours: notifications wait and come as one message when "
            "they end (`quiet off` to stop)", menu=False),
    Command("digest", "digest daily 09:00", "One message a day with your notifications (`digest off` to stop)",
            menu=False),
    Command("timezone", "timezone Europe/Berlin", "The time zone I show times in (Teams tells me yours; "
            "`timezone auto` follows it again)", menu=False),
)
MENU_COMMANDS = tuple(c for c in COMMANDS if c.menu)

COMMAND_NAMES = frozenset(c.name for c in COMMANDS)


def parse_command(text: str) -> tuple[str, str]:
    """Split user text into (command, rest), case-insensitive; ('', '') for empty text."""
    words = text.strip().split(maxsplit=1)
    if not words:
        return "", ""
    return words[0].lower(), words[1].strip() if len(words) > 1 else ""


def help_text(bot_name: str) -> str:
    """Markdown help: what the bot does and every command."""
    lines = [
        f"**{bot_name}** watches product prices for you and tells you when they move, and runs longer "
        "analyses in the background so you can keep chatting; I hold my notifications while we're in "
        "the middle of something.",
        "",
        "Commands:",
    ]
    lines += [f"- `{c.usage}` — {c.description}" for c in COMMANDS]
    return "\n".join(lines)
