"""The words of the bot's replies, kept apart from the routing so they can be read (and tested) together."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from datetime import datetime

from state.model import UNTIL_UNMUTED, NotificationSettings, QuietHours, WatchResult, WatchView, local_time

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
        return "No analyses are running. Start one with `analyze PRODUCT`."
    lines = [f"Analyses still running ({len(products)}):"]
    lines += [f"- {bold(p)}" for p in products]
    lines.append("Type `cancel PRODUCT` to stop one.")
    return "\n".join(lines)


def gave_up(topic: str, example: str) -> str:
    return f"I still couldn't use that, so I've stopped {topic}. Start again any time, e.g. {example}."


# ---- settings ---------------------------------------------------------------------------------------------

QUIET_HINT = ("Tell me when, as a range of local times: `quiet 22:00-07:00` (or `quiet off`). Non-urgent "
              "notifications then wait and come as one message when the quiet hours end.")
QUIET_OFF = "Quiet hours are off. Anything they were holding is on its way."
DIGEST_HINT = "Tell me the local time for your digest: `digest daily 09:00` (or `digest off`)."
DIGEST_OFF = "The daily digest is off: notifications come as they happen again. Anything it was holding is on its way."


def timezone_now(settings: NotificationSettings, now: datetime) -> str:
    source = "you chose it" if settings.timezone_chosen else "Teams told me"
    return (f"I show times in **{settings.timezone}** ({source}); it's {local_time(now, settings.timezone, '%H:%M')} "
            "there now. Change it with `timezone Europe/Berlin`, or `timezone auto` to follow Teams.")


def timezone_set(zone: str, now: datetime) -> str:
    return (f"Done: I'll show times in **{zone}** (it's {local_time(now, zone, '%H:%M')} there now), and your "
            "quiet hours and digest follow it. `timezone auto` follows what Teams reports again.")


def timezone_follows_teams(current: str) -> str:
    return (f"OK: I'll follow the time zone Teams reports for you (**{current}** for now; it updates with your "
            "next message if Teams knows another).")


def unknown_timezone(wanted: str, current: str) -> str:
    return (f"I don't know the time zone `{escape(wanted)}`, so I kept **{current}**. Use an IANA name such as "
            "`Europe/Berlin`, `America/New_York` or `Asia/Tokyo`.")


def quiet_now(settings: NotificationSettings) -> str:
    if settings.quiet is None:
        return f"Quiet hours are off. {QUIET_HINT}"
    return (f"Quiet hours: {settings.quiet.describe()} ({settings.timezone}). `quiet off` turns them off; "
            "`settings` shows everything.")


def quiet_on(quiet: QuietHours, timezone: str, whose: str) -> str:
    return (f"Quiet hours on: {quiet.describe()} ({timezone}). During them {whose} wait, and come as one message "
            f"at {quiet.end}; results you asked for and urgent notifications still come at once. "
            "`quiet off` turns them off.")


def digest_now(settings: NotificationSettings) -> str:
    if settings.digest_at is None:
        return f"The daily digest is off. {DIGEST_HINT}"
    return f"Daily digest: every day at {settings.digest_at} ({settings.timezone}). `digest off` turns it off."


def digest_on(at: str, timezone: str, whose: str) -> str:
    return (f"Daily digest on: I'll collect {whose} and send them as one message every day at {at} ({timezone}). "
            "Results you asked for and urgent notifications still come at once. `digest off` turns it off.")


def settings_summary(mine: NotificationSettings, applied: NotificationSettings) -> str:
    """The settings card as one line of text (its fallback, and the message's text)."""
    quiet = applied.quiet.describe() if applied.quiet else "off"
    digest = f"at {applied.digest_at}" if applied.digest_at else "off"
    if applied.muted_until is None:
        muted = "on"
    elif applied.muted_until == UNTIL_UNMUTED:
        muted = "muted until you unmute"
    else:
        muted = f"muted until {local_time(applied.muted_until, mine.timezone)}"
    return (f"Time zone {mine.timezone}; quiet hours {quiet}; daily digest {digest}; notifications {muted}.")
