"""The router: one message in, one command out. Begun per message when no topic is active.

Single-turn commands answer and end; `watch` continues as a child dialog (WatchDialog) until it
completes or is cancelled. Input is typed text (the handler has already removed the @mention) or a
card button's `{"command": ...}` data; see `user_input.read_input`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from botbuilder.core import MessageFactory, TurnContext
from botbuilder.dialogs import ComponentDialog, DialogContext, DialogTurnResult, DialogTurnStatus

from state.clock import Clock
from state.model import QuietHours, local_time, parse_clock, timezone_name, user_subject

from . import replies
from .cards import as_attachment, help_card, watch_list_card
from .commands import help_text
from .conditions import ConditionError, InputError, parse_condition, parse_watch_command, validate_product
from .durations import DurationError, describe_duration, parse_duration
from .ports import Analyses, Preferences, WatchBook
from .settings_card import settings_card
from .user_input import UserInput, conversation_id, mute_subject, read_input, user_ref
from .watch_dialog import WatchDialog, watch_options

Route = Callable[[DialogContext, UserInput], Awaitable[Any]]


class MainDialog(ComponentDialog):
    """Routes commands case-insensitively; unknown or empty input always gets an answer."""

    def __init__(
        self,
        *,
        watches: WatchBook,
        analyses: Analyses,
        preferences: Preferences,
        clock: Clock,
        bot_name: str,
        dialog_id: str = "main",
    ) -> None:
        super().__init__(dialog_id)
        self._watches = watches
        self._analyses = analyses
        self._preferences = preferences
        self._clock = clock
        self._help_text = help_text(bot_name)
        self._watch_dialog = WatchDialog(watches, help_text=self._help_text)
        self.add_dialog(self._watch_dialog)
        self._routes: dict[str, Route] = {
            "help": self._help,
            "watch": self._watch,
            "list": self._list,
            "unwatch": self._unwatch,
            "analyze": self._analyze,
            "status": self._status,
            "cancel": self._cancel,
            "mute": self._mute,
            "unmute": self._unmute,
            "settings": self._settings,
            "timezone": self._timezone,
            "quiet": self._quiet,
            "digest": self._digest,
        }

    async def on_begin_dialog(self, inner_dc: DialogContext, options: object) -> Any:
        user_input = read_input(inner_dc.context.activity)
        route = self._routes.get(user_input.command)
        if route is not None:
            return await route(inner_dc, user_input)
        reply = replies.unknown(user_input.command) if user_input.command else replies.EMPTY
        return await _answer(inner_dc.context, reply)

    async def _help(self, dc: DialogContext, _: UserInput) -> Any:
        await dc.context.send_activity(MessageFactory.attachment(as_attachment(help_card()), self._help_text))
        return _done()

    async def _watch(self, dc: DialogContext, user_input: UserInput) -> Any:
        note = None
        try:
            if user_input.product is not None:  # a button that names the product
                product: str | None = validate_product(user_input.product)
                condition = parse_condition(user_input.rest) if user_input.rest else None
            else:
                product, condition = parse_watch_command(user_input.rest)
        except ConditionError as exc:  # keep what was good, ask for the rest
            product, condition, note = exc.product, None, str(exc)
        return await dc.begin_dialog(self._watch_dialog.id, watch_options(product, condition, note))

    async def _list(self, dc: DialogContext, _: UserInput) -> Any:
        watches = await self._watches.list(user_ref(dc.context.activity).id)
        if not watches:
            return await _answer(dc.context, replies.watch_list(watches))
        card = watch_list_card(watches)
        card["fallbackText"] = replies.watch_list(watches)
        summary = f"You're watching {len(watches)} product{'' if len(watches) == 1 else 's'}."
        await dc.context.send_activity(MessageFactory.attachment(as_attachment(card), summary))
        return _done()

    async def _unwatch(self, dc: DialogContext, user_input: UserInput) -> Any:
        user_id = user_ref(dc.context.activity).id
        if not user_input.argument.strip():
            watches = await self._watches.list(user_id)
            if not watches:
                return await _answer(dc.context, "You aren't watching anything, so there's nothing to unwatch.")
            question = "Which one? Tap **Unwatch**, or type `unwatch PRODUCT`."
            await dc.context.send_activity(MessageFactory.attachment(as_attachment(watch_list_card(watches)), question))
            return _done()
        try:
            product = validate_product(user_input.argument)
        except InputError as exc:
            return await _answer(dc.context, str(exc))
        if await self._watches.remove(user_id, product):
            return await _answer(dc.context, f"Stopped watching {replies.bold(product)}.")
        return await _answer(
            dc.context, f"You weren't watching {replies.bold(product)}. Type `list` to see what you watch."
        )

    async def _analyze(self, dc: DialogContext, user_input: UserInput) -> Any:
        if not user_input.argument.strip():
            return await _answer(dc.context, "Which product? Type `analyze PRODUCT`, e.g. `analyze gadget`.")
        try:
            product = validate_product(user_input.argument)
        except InputError as exc:
            return await _answer(dc.context, str(exc))
        activity = dc.context.activity
        message = await self._analyses.start(user_ref(activity), conversation_id(activity), product)
        if message is None:  # the analysis posted its own acknowledgement, to update it in place
            return _done()
        return await _answer(dc.context, message)

    async def _status(self, dc: DialogContext, _: UserInput) -> Any:
        running = await self._analyses.running(user_ref(dc.context.activity).id)
        return await _answer(dc.context, replies.running(running))

    async def _cancel(self, dc: DialogContext, user_input: UserInput) -> Any:
        """Reached only when no topic is active (an active topic handles `cancel` itself)."""
        user_id = user_ref(dc.context.activity).id
        if user_input.argument.strip():
            product = user_input.argument.strip()
            if await self._analyses.cancel(user_id, product):
                return await _answer(dc.context, f"Stopped the analysis of {replies.bold(product)}.")
            return await _answer(dc.context, f"No analysis of {replies.bold(product)} is running. Type `status`.")
        reply = replies.NOTHING_TO_CANCEL
        if await self._analyses.running(user_id):
            reply += " To stop a running analysis, type `cancel PRODUCT` (`status` lists them)."
        return await _answer(dc.context, reply)

    async def _mute(self, dc: DialogContext, user_input: UserInput) -> Any:
        subject = mute_subject(dc.context.activity)
        whose = _whose(subject)
        if not user_input.rest:
            await self._preferences.mute(subject, None)
            return await _answer(dc.context, f"Muted {whose} until you type `unmute`.")
        try:
            duration = parse_duration(user_input.rest)
        except DurationError as exc:
            return await _answer(dc.context, str(exc))
        until = self._clock.now() + duration
        await self._preferences.mute(subject, until)
        return await _answer(
            dc.context,
            f"Muted {whose} for {describe_duration(duration)}, until {local_time(until, await self._zone(dc))}. "
            "Type `unmute` to turn them back on sooner.",
        )

    async def _unmute(self, dc: DialogContext, _: UserInput) -> Any:
        subject = mute_subject(dc.context.activity)
        if await self._preferences.unmute(subject):
            return await _answer(dc.context, f"{_whose(subject).capitalize()} are back on.")
        return await _answer(dc.context, f"{_whose(subject).capitalize()} weren't muted; nothing to do.")

    # -- settings: time zone, quiet hours, daily digest ----------------------------------------------------

    async def _zone(self, dc: DialogContext) -> str:
        """The time zone of the person typing (UTC until Teams or the `timezone` command tells us)."""
        return (await self._preferences.settings(user_subject(user_ref(dc.context.activity).id))).timezone

    async def _settings(self, dc: DialogContext, _: UserInput) -> Any:
        activity = dc.context.activity
        subject = mute_subject(activity)
        mine = await self._preferences.settings(user_subject(user_ref(activity).id))
        applied = mine if subject.startswith("user:") else await self._preferences.settings(subject)
        card = settings_card(mine, applied, now=self._clock.now(), shared=not subject.startswith("user:"))
        summary = replies.settings_summary(mine, applied)
        card["fallbackText"] = summary
        reply = MessageFactory.attachment(as_attachment(card))
        reply.summary = summary
        await dc.context.send_activity(reply)
        return _done()

    async def _timezone(self, dc: DialogContext, user_input: UserInput) -> Any:
        subject = user_subject(user_ref(dc.context.activity).id)
        current = await self._preferences.settings(subject)
        wanted = user_input.rest.strip()
        now = self._clock.now()
        if not wanted:
            return await _answer(dc.context, replies.timezone_now(current, now))
        if wanted.lower() in ("auto", "teams", "reset"):
            await self._preferences.choose_timezone(subject, None)
            return await _answer(dc.context, replies.timezone_follows_teams(current.timezone))
        zone = timezone_name(wanted)
        if zone is None:
            return await _answer(dc.context, replies.unknown_timezone(wanted, current.timezone))
        await self._preferences.choose_timezone(subject, zone)
        return await _answer(dc.context, replies.timezone_set(zone, now))

    async def _group_zone(self, dc: DialogContext, subject: str) -> str | None:
        """A conversation's quiet hours and digest follow the time zone of the member who set them."""
        return None if subject.startswith("user:") else await self._zone(dc)

    async def _quiet(self, dc: DialogContext, user_input: UserInput) -> Any:
        subject = mute_subject(dc.context.activity)
        wanted = user_input.rest.strip().lower()
        if not wanted:
            return await _answer(dc.context, replies.quiet_now(await self._preferences.settings(subject)))
        if wanted in ("off", "stop", "none"):
            await self._preferences.set_quiet(subject, None)
            return await _answer(dc.context, replies.QUIET_OFF)
        quiet = QuietHours.parse(wanted)
        if quiet is None:
            return await _answer(dc.context, replies.QUIET_HINT)
        await self._preferences.set_quiet(subject, quiet, timezone=await self._group_zone(dc, subject))
        settings = await self._preferences.settings(subject)
        return await _answer(dc.context, replies.quiet_on(quiet, settings.timezone, _whose(subject)))

    async def _digest(self, dc: DialogContext, user_input: UserInput) -> Any:
        subject = mute_subject(dc.context.activity)
        words = user_input.rest.strip().lower().split()
        if not words:
            return await _answer(dc.context, replies.digest_now(await self._preferences.settings(subject)))
        if words[0] in ("off", "stop", "none"):
            await self._preferences.set_digest(subject, None)
            return await _answer(dc.context, replies.DIGEST_OFF)
        if words[0] == "daily":
            words = words[1:]
        if words[:1] == ["at"]:
            words = words[1:]
        at = parse_clock(words[0]) if len(words) == 1 else None
        if at is None:
            return await _answer(dc.context, replies.DIGEST_HINT)
        await self._preferences.set_digest(subject, at, timezone=await self._group_zone(dc, subject))
        settings = await self._preferences.settings(subject)
        return await _answer(dc.context, replies.digest_on(at, settings.timezone, _whose(subject)))


def _whose(subject: str) -> str:
    return "your notifications" if subject.startswith("user:") else "notifications in this conversation"


def _done() -> Any:
    return DialogTurnResult(DialogTurnStatus.Complete)


async def _answer(context: TurnContext, text: str) -> Any:
    await context.send_activity(MessageFactory.text(text))
    return _done()
