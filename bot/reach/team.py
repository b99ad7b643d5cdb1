"""`{"to": {"team": …}}`: every member of a team, each in their own 1:1 chat, never a post in the channel.

A team notice is a broadcast (bot/api/broadcasts.py) whose expansion pages through the team's roster
(Teams' paged members, 100 at a time): each page of its job reads one roster page, records the members in
the team's conversation (so the delivery worker opens, or reuses, their 1:1 chat at the team's Bot
Connector), and writes one recipient row per member, the bot left out, with the continuation token as the
broadcast's cursor in the same transaction. A crash re-reads at most one page; the rows' dedup keys keep each
person to one message. Memory stays flat in the size of the team.
"""

from __future__ import annotations

import logging
from typing import Protocol

from bot.onboarding.team_members import Member
from state.broadcasts import Broadcast, BroadcastStore
from state.outbox import OutboxItem
from state.references import ConversationRecord, ConversationReferences

log = logging.getLogger(__name__)

PAGE_SIZE = 100
LAST_PAGE = "end"  # the cursor once the last roster page is written (Teams' tokens are never this)


class RosterPages(Protocol):
    """One page of a team's roster at a time (bot/teams/roster.py)."""

    async def team_members_page(self, record: ConversationRecord, team_id: str, token: str | None,
                                size: int = PAGE_SIZE) -> tuple[list[Member], str | None]: ...


class TeamPages:
    """Writes a team broadcast's recipients, one roster page per call (see the module docstring)."""

    def __init__(self, roster: RosterPages, references: ConversationReferences, store: BroadcastStore) -> None:
        self._roster = roster
        self._references = references
        self._store = store

    async def next_page(self, broadcast: Broadcast) -> tuple[bool, int]:
        """(done, rows written) for the next roster page of `broadcast` (audience `{"team": id}`)."""
        team_id = str(broadcast.audience["team"])
        record = await self._references.team(team_id)
        if record is None:  # the bot left the team meanwhile: nobody more to write
            log.warning("team notice %s: the bot is no longer in team %s", broadcast.public_id, team_id)
            await self._store.write_page(broadcast.id, [], cursor=LAST_PAGE, resolved=0, done=True)
            return True, 0
        members, token = await self._roster.team_members_page(record, team_id, broadcast.cursor or None)
        members = [m for m in members if m.id != record.bot_id and not m.id.startswith("28:")]
        await self._references.add_members(record.conversation_id, [(m.id, m.aad_object_id, m.name) for m in members])
        base = broadcast.dedup_key or broadcast.public_id
        items = [OutboxItem(payload={}, target_user_id=m.id, tenant_id=m.tenant_id or record.tenant_id,
                            dedup_key=f"{base}|user:{m.aad_object_id or m.id}", category=broadcast.category,
                            priority=broadcast.priority, expires_at=broadcast.expires_at,
                            broadcast_id=broadcast.id, undecided=True)
                 for m in members]
        results, _ = await self._store.write_page(broadcast.id, items, cursor=token or LAST_PAGE,
                                                  resolved=len(items), done=not token)
        log.info("team notice %s: a roster page of team %s, %d member(s) written%s", broadcast.public_id, team_id,
                 len(items), "" if token else "; that was the last page")
        return not token, sum(1 for r in results if r.created)
