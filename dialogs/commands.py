"""The commands the bot understands: one catalogue for help text, the Teams manifest and the router."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    description: str


COMMANDS: tuple[Command, ...] = (
    Command("help", "help", "What I can do and how to ask for it"),
    Command("watch", "watch <product> below <price>", "Watch a product's price and alert you when it moves"),
    Command("list", "list", "Show the prices you are watching"),
    Command("unwatch", "unwatch <product>", "Stop watching a product"),
    Command("analyze", "analyze <product>", "Analyse a product's price history; I message you when done"),
    Command("status", "status", "Show analyses that are still running"),
    Command("cancel", "cancel", "Stop what we are in the middle of"),
    Command("mute", "mute [duration]", "Pause notifications, e.g. `mute 2h`, or until you unmute"),
    Command("unmute", "unmute", "Turn notifications back on"),
)

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
