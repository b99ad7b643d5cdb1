"""Price watching: one poll job per watched product, every price change evaluated against its watches.

Quotes come from polling (a PriceSource) or from `POST /api/prices`. Each new quote is recorded and an
evaluation is scheduled a few seconds later (only if none is pending), so rapid moves coalesce into one
alert carrying the latest price. The evaluation job also carries the price from before the burst, so an
alert says where the price came from ("12.00 → 9.50 USD") even for a watch that had not seen a price yet.
Alerts go through the interjection policy and the outbox, with times in the watch owner's time zone,
addressed to the watch's owner in the conversation where the watch was made (in a group chat or channel:
@mentioning them, and held only while they are mid-topic there).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal, InvalidOperation

from bot.delivery.proactive import ProactiveMessages
from dialogs.alert_card import Alert, alert_payload
from dialogs.replies import escape
from scheduler.jobs import Job, JobState
from scheduler.scheduler import Scheduler
from state.clock import Clock
from state.model import (
    GROUP_SCOPES,
    Condition,
    Observation,
    UserRef,
    WatchResult,
    WatchView,
    evaluate_key,
    local_time,
    poll_key,
    product_key,
    user_subject,
)
from state.outbox import OutboxItem
from state.preferences import Preferences
from state.prices import PriceLog, Seen, WatchRow, triggers
from state.references import ConversationReferences
from state.watches import WatchStore

from .sources import PriceSource

log = logging.getLogger(__name__)

POLL = "prices.poll"
EVALUATE = "prices.evaluate"


class PriceWatcher:
    """Implements the dialogs' WatchBook port and reacts to price quotes."""

    def __init__(self, book: WatchStore, prices: PriceLog, proactive: ProactiveMessages, scheduler: Scheduler,
                 references: ConversationReferences, clock: Clock, source: PriceSource | None = None,
                 coalesce_seconds: float = 3.0, preferences: Preferences | None = None) -> None:
        self._book = book
        self._prices = prices
        self._proactive = proactive
        self._scheduler = scheduler
        self._references = references
        self._clock = clock
        self._source = source
        self._coalesce = coalesce_seconds
        self._preferences = preferences
        scheduler.register(POLL, self._poll)
        scheduler.register(EVALUATE, self._evaluate)

    # -- the WatchBook port ------------------------------------------------------------------------

    async def add(self, user: UserRef, conversation_id: str, product: str, condition: Condition) -> WatchResult:
        result = await self._book.add(user, conversation_id, product, condition)
        if result.status != "rejected":
            if condition.kind in ("any", "percent"):  # these measure moves from the price known now
                latest = await self._prices.latest(product)
                if latest is not None:
                    for watch in await self._prices.watches_on(product):
                        if watch.user_id == user.id and watch.last_price is None:
                            await self._prices.saw(watch.id, latest.price, alerted=False)
            await self._ensure_polling(product)
        return result

    async def list(self, user_id: str) -> list[WatchView]:
        return await self._book.list(user_id)

    async def remove(self, user_id: str, product: str) -> bool:
        removed = await self._book.remove(user_id, product)
        if removed:
            await self._stop_polling_if_unwatched(product)
        return removed

    # -- polling -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Make sure every watched product is polled by the configured source, and that no product is silenced by
        a dead job: a poll or evaluation that ran out of attempts is armed again (and logged)."""
        # evaluations first: a re-armed poll due at once may run and schedule a fresh evaluation over a dead one
        for job in await self._scheduler.list_jobs("evaluate:"):
            if job.state is JobState.DEAD:
                log.warning("re-arming the dead evaluation of %s (last error: %s)", job.payload.get("product"),
                            job.last_error)
                await self._scheduler.schedule_in(0, EVALUATE, job.payload, key=job.key)
        for key in await self._prices.watched_products():
            await self._ensure_polling(key)

    async def _ensure_polling(self, product: str) -> None:
        if self._source is None:
            return
        key = poll_key(product)
        job = await self._scheduler.get(key=key)
        if job is not None and job.state is not JobState.DEAD:
            return  # pending, or running (a repeating job schedules its next run itself)
        if job is not None:
            log.warning("re-arming the dead poll of %s (last error: %s)", product_key(product), job.last_error)
        await self._scheduler.schedule_every(
            self._source.poll_interval_s, POLL, {"product": product_key(product)}, key=key, first_in=0,
            misfire="skip",
        )

    async def _stop_polling_if_unwatched(self, product: str) -> None:
        if not await self._prices.watches_on(product):
            await self._scheduler.cancel(key=poll_key(product))

    async def _poll(self, job: Job) -> None:
        product = str(job.payload["product"])
        if self._source is None or not await self._prices.watches_on(product):
            await self._scheduler.cancel(key=poll_key(product))
            return
        quote = await self._source.fetch(product)
        if quote is not None:
            await self.observe(quote)

    # -- quotes and alerts -------------------------------------------------------------------------

    async def observe(self, observation: Observation) -> None:
        """A new price (polled or pushed): record it; evaluate soon, once for a burst of moves.

        The first quote of a burst notes the price before it (or itself, when it is the first price ever):
        that is where an alert says the price came from."""
        key = evaluate_key(observation.product)
        job = await self._scheduler.get(key=key)
        pending = job is not None and job.state is JobState.PENDING  # running or dead: evaluate again after this
        before = await self._prices.latest(observation.product) if not pending else None
        await self._prices.record(observation)
        if not pending:
            start = before.price if before is not None else observation.price
            await self._scheduler.schedule_in(
                self._coalesce, EVALUATE, {"product": product_key(observation.product), "from": str(start)}, key=key
            )

    async def _evaluate(self, job: Job) -> None:
        """Alert every watch the latest price triggers. The alerts and "these watches saw this price (and these
        alerted)" commit in one transaction, so a crash between cannot lose an alert nor send one twice."""
        product = str(job.payload["product"])
        latest = await self._prices.latest(product)
        if latest is None:
            return
        now = self._clock.now().timestamp()
        items, seen = [], []
        for watch in await self._prices.watches_on(product):
            fire = triggers(watch.condition, last_seen=watch.last_price, last_alert=watch.last_alert_price,
                            new=latest.price)
            snoozed = watch.snoozed_until is not None and watch.snoozed_until > now
            if fire and not snoozed:
                record = await self._references.get(watch.conversation_id)
                previous = watch.last_price if watch.last_price is not None else _price(job.payload.get("from"))
                alert = Alert(watch.id, watch.product, previous, latest.price, latest.currency,
                              latest.source, latest.url, watch.condition, latest.observed_at,
                              timezone=await self._timezone(watch.user_id))
                group = record is not None and record.conversation_type in GROUP_SCOPES
                items.append(OutboxItem(
                    payload=alert_payload(alert, await self._owner(watch) if group else None),
                    conversation_id=watch.conversation_id, target_user_id=watch.user_id,
                    tenant_id=record.tenant_id if record else None, category="notification",
                    subject=f"price:{product}", dedup_key=watch.alert_key(),
                ))
            seen.append(Seen(watch.id, latest.price, alerted=fire and not snoozed))
        if items:
            await self._proactive.enqueue(items, also=lambda tx: self._prices.record_seen(seen, tx))
            log.info("price of %s is %s: %d alert(s)", product, latest.price, len(items))
        else:
            await self._prices.record_seen(seen)

    async def _owner(self, watch: WatchRow) -> UserRef:
        """Who to @mention: the watch's owner, by the name they had when they made it (or were last seen with)."""
        name = watch.user_name or await self._references.member_name(watch.conversation_id, watch.user_id)
        return UserRef(watch.user_id, name=name)

    async def watch(self, watch_id: int) -> WatchRow | None:
        """One watch as stored (who owns it, on what, its last price)."""
        return await self._prices.watch(watch_id)

    async def snooze(self, watch_id: int, user_id: str, hours: float) -> str:
        """Snooze the presser's own watch."""
        watch = await self._prices.watch(watch_id)
        if watch is not None and watch.user_id != user_id:
            return "This alert belongs to someone else's watch; only they can snooze it."
        until = self._clock.now() + timedelta(hours=hours)
        if watch is None or not await self._prices.snooze(watch_id, user_id, until):
            return "That watch no longer exists."
        return f"Snoozed until {local_time(until, await self._timezone(user_id))}."

    async def _timezone(self, user_id: str) -> str:
        """The user's time zone (UTC until known)."""
        return await self._preferences.timezone(user_subject(user_id)) if self._preferences else "UTC"

    async def stop(self, watch_id: int, user_id: str) -> str:
        """Remove the presser's own watch."""
        watch = await self._prices.watch(watch_id)
        if watch is not None and watch.user_id != user_id:
            return "This alert belongs to someone else's watch; only they can stop it."
        if watch is None or not await self._prices.remove_watch(watch_id, user_id):
            return "You're no longer watching this product."
        await self._stop_polling_if_unwatched(watch.product)
        return f"Stopped watching {escape(watch.product)}."


def _price(value: object) -> Decimal | None:
    """A price stored in a job payload; None when absent or unreadable (jobs written by older versions)."""
    try:
        return Decimal(str(value)) if value is not None else None
    except InvalidOperation:
        return None
