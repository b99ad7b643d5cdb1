"""The words of the bot's replies, kept apart from the routing so they can be read (and tested) together."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from state.model import WatchResult, WatchView

from .commands import COMMAND_NAMES

_MARKDOWN = re.compile(r"([\\`*_~\[\]])")

EMPTY = "Type `help` to see what I can do."
NOTHING_TO_CANCEL = "There's nothing to cancel right now."
WATCH_EXAMPLE = "`watch gadget below 20`"


def escape(text: str) -> str:
    """User text made safe to show inside markdown (no accidental bold, code or links)."""
    return _MARKDOWN.sub(r"\\\1", text)


def bold(product: str) -> str:
    return f"**{escape(product)}**"


def iso_utc(moment: datetime) -> str:
    """`2026-01-01T02:00:00Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unknown(command: str) -> str:
    """Never silence: say what was not understood and what to try."""
    guess = difflib.get_close_matches(command, sorted(COMMAND_NAMES), n=1, cutoff=0.7)
    hint = f"Did you mean `{guess[0]}`? " if guess else ""
    return f"I don't know `{escape(command)}`. {hint}Try `help` to see what I can do."


def watch_saved(result: WatchResult) -> str:
    watch = result.watch
    what = f"{bold(watch.product)} {watch.condition.describe()}"
    if result.status == "rejected":
        return f"I couldn't add that watch: {result.reason or 'it was refused'}. Type `list` to see your watches."
    if result.status == "updated":
        return f"Updated: I'll now tell you when {what}."
    return f"Done: I'll tell you when {what}. Type `list` to see all your watches."


def watch_list(watches: Sequence[WatchView]) -> str:
    if not watches:
        return f"You aren't watching any prices yet. Try {WATCH_EXAMPLE}."
    count = f"{len(watches)} product{'' if len(watches) == 1 else 's'}"
    lines = [f"You're watching {count}:"]
    lines += [f"- {bold(w.product)}: when it {w.condition.describe()}" for w in watches]
    return "\n".join(lines)


def running(products: Sequence[str]) -> str:
    if not products:
        return "No analyses are running. Start one with `analyze <product>`."
    lines = [f"Analyses still running ({len(products)}):"]
    lines += [f"- {bold(p)}" for p in products]
    lines.append("Type `cancel <product>` to stop one.")
    return "\n".join(lines)


def gave_up(topic: str, example: str) -> str:
    return f"I still couldn't use that, so I've stopped {topic}. Start again any time, e.g. {example}."
