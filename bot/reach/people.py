"""The delivery worker's way to someone it has never seen: a new 1:1 chat, or a parked notice and an install.

Called by `DeliveryWorker` for a row addressed to an AAD object id that no conversation reference knows
(`/api/notify` with `{"users": [...], "tenantId": ...}`). The chat is created at the Bot Connector last seen
for the tenant (else TEAMS_SERVICE_URL) with the bot's account `28:<app id>` and the person as the only
member; this counts as a send of the row's ticket, within Teams' limits. Teams' 403 means the app is not
installed for them:

- PROACTIVE_INSTALL=false: they end as `not installed` (the row fails with that reason);
- else the row is parked (`SendFailure("park")`: held with the note `state.reach.PARKED`, written by the
  worker) and then (`parked`) their install is made due (`reach_people`: `installing`) until the installer
  lets the row go. Rows for someone whose install is under way are parked without asking Teams again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from bot.delivery.failures import SendFailure
from bot.graph.client import is_guid
from bot.metrics import Metrics
from dialogs.welcome_card import InstallContext, welcome_payload
from state.clock import Clock
from state.outbox import OutboxItem, OutboxRow
from state.reach import PARKED, ReachStore
from state.references import ConversationRecord, ConversationReferences

log = logging.getLogger(__name__)

# 403 codes that mean the person (not the app) shut the bot out: no install can change that.
_REFUSED = {"ConversationBlockedByUser", "BotDisabledByAdmin"}


WELCOME_PRIORITY = 2
"""Above any notice's, so the welcome goes first in their shared queue (both address `user:<id>`)."""
RECENT_INSTALL_S = 3600.0


def welcome_item(bot_name: str, tenant_id: str, user_id: str) -> OutboxItem:
    """The welcome for someone the bot installed itself for: why they get it; once per person (dedup key)."""
    return OutboxItem(payload=welcome_payload(bot_name, InstallContext("reached")), target_user_id=user_id,
                      tenant_id=tenant_id, category="welcome", priority=WELCOME_PRIORITY,
                      dedup_key=f"reach-welcome:{tenant_id}:{user_id}")


class ChatOpener(Protocol):
    async def open_personal_chat(self, service_url: str, tenant_id: str | None, bot_id: str, user_id: str) -> str: ...


class NewPeople:
    """See the module docstring. `wake_installer` is called when an install becomes due."""

    def __init__(self, store: ReachStore, references: ConversationReferences, opener: ChatOpener, *, app_id: str,
                 proactive_install: bool, default_service_url: str, metrics: Metrics | None = None,
                 wake_installer: Callable[[], None] | None = None, channel_id: str = "msteams",
                 clock: Clock) -> None:
        self._clock = clock
        self._store = store
        self._references = references
        self._opener = opener
        self.bot_id = f"28:{app_id}" if app_id else "28:bot"
        self._proactive_install = proactive_install
        self._default_service_url = default_service_url
        self._metrics = metrics or Metrics()
        self._wake = wake_installer
        self._channel_id = channel_id

    async def installed_by_us(self, tenant_id: str, user_id: str) -> bool:
        """Whether the bot is installing the app for this person, or did within the last hour (Teams' install
        event for it is then not a reason for a second, generic welcome)."""
        person = await self._store.get(tenant_id, user_id)
        if person is None:
            return False
        recent = person.updated_at >= self._store_now() - RECENT_INSTALL_S
        return person.state == "installing" or (person.state == "installed" and recent)

    def _store_now(self) -> float:
        return self._clock.now().timestamp()

    @staticmethod
    def reachable(row: OutboxRow) -> bool:
        """Whether this row names someone this path can try: an AAD object id in a tenant."""
        return bool(row.tenant_id and row.target_user_id and is_guid(row.target_user_id) and is_guid(row.tenant_id))

    async def open_chat(self, row: OutboxRow) -> ConversationRecord:
        """The new 1:1 chat (recorded as a conversation reference), or SendFailure (park, drop, retry)."""
        tenant, user = row.tenant_id or "", row.target_user_id or ""
        person = await self._store.get(tenant, user)
        if person is not None and person.state == "installing":
            raise SendFailure("park", None, "Installing", PARKED, attempted=False)
        service_url = await self._references.tenant_service_url(tenant) or self._default_service_url
        try:
            conversation_id = await self._opener.open_personal_chat(service_url, tenant, self.bot_id, user)
        except SendFailure as failure:
            if failure.status != 403:
                raise
            return await self._not_installed(tenant, user, failure, installed=person is not None
                                             and person.state == "installed")
        record = ConversationRecord(
            conversation_id=conversation_id, channel_id=self._channel_id, service_url=service_url,
            reference={"bot": {"id": self.bot_id}, "user": {"id": user, "aadObjectId": user},
                       "conversation": {"id": conversation_id, "conversationType": "personal", "tenantId": tenant},
                       "channelId": self._channel_id, "serviceUrl": service_url},
            tenant_id=tenant, conversation_type="personal", user_id=user, user_aad_id=user, bot_id=self.bot_id,
        )
        await self._references.upsert(record, reactivate=True)
        await self._references.add_members(conversation_id, [(user, user, None)])
        self._metrics.reach_step("first_chat")
        log.info("opened a first 1:1 chat %s with %s in tenant %s", conversation_id, user, tenant)
        return record

    async def _not_installed(self, tenant: str, user: str, failure: SendFailure, *, installed: bool
                             ) -> ConversationRecord:
        if failure.code in _REFUSED:
            await self._store.record(tenant, user, "forbidden", str(failure))
            self._metrics.reach_step("forbidden")
            raise SendFailure("drop", 403, failure.code, f"forbidden: {failure.message}")
        if not self._proactive_install:
            await self._store.record(tenant, user, "not installed", str(failure))
            self._metrics.reach_step("not installed")
            log.info("%s in tenant %s does not have the app and PROACTIVE_INSTALL is off", user, tenant)
            raise SendFailure("drop", 403, "NotInstalled", f"not installed: the app is not installed for this person "
                              f"and PROACTIVE_INSTALL is off ({failure.message})")
        if installed:  # Graph installed it a moment ago; Teams may take a little while to know
            raise SendFailure("retry", 403, "NotInstalledYet", f"installed, Teams does not know yet: {failure.message}",
                              retry_after=5.0)
        raise SendFailure("park", 403, "Installing", PARKED)

    async def parked(self, row: OutboxRow) -> None:
        """The worker has parked `row` (written): make its person's install due, unless one is under way."""
        tenant, user = row.tenant_id or "", row.target_user_id or ""
        if await self._store.start_install(tenant, user):
            self._metrics.reach_step("installing")
            log.info("%s in tenant %s does not have the app: installing it through Graph", user, tenant)
        if self._wake is not None:
            self._wake()
