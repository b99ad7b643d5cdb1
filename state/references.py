"""Conversation references: where and how to reach every conversation the bot has seen.

SDK-free: the bot layer turns an inbound activity into a `ConversationRecord` (the SDK's
ConversationReference is kept as a JSON dict) and back. A channel is one record, whichever of its threads
the bot heard from: its `conversation_id` is the channel's (`state.model.conversation_key`), and it keeps
the team's and the channel's names once Teams has sent them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, overload

from state.clock import Clock

from .db import ANY, CACHE_CHANNEL, Connection, Database, Row, by_name, chunks, marks


class _JsonParsedOnUse:
    """A dict field that may be given as its JSON text, parsed the first time it is read: a record read for a send
    needs its service URL, not its stored reference (a broadcast reads a million records once each)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._key = f"_{name}"

    @overload
    def __get__(self, record: None, owner: type) -> _JsonParsedOnUse: ...

    @overload
    def __get__(self, record: object, owner: type | None = None) -> dict[str, Any]: ...

    def __get__(self, record: object | None, owner: type | None = None) -> dict[str, Any] | _JsonParsedOnUse:
        if record is None:
            raise AttributeError("a required field")  # (what dataclasses take for "no default")
        value = record.__dict__[self._key]
        if isinstance(value, str):
            value = record.__dict__[self._key] = json.loads(value)
        return value

    def __set__(self, record: object, value: dict[str, Any] | str) -> None:
        record.__dict__[self._key] = value


@dataclass
class ConversationRecord:
    """One conversation as last seen. `user_*` is the member who spoke or acted last; `team_*` and
    `channel_name` are set for channels (from channelData; a name, once seen, is kept)."""

    conversation_id: str
    channel_id: str
    service_url: str
    reference: _JsonParsedOnUse = _JsonParsedOnUse()  # a dict, or its JSON text until read
    tenant_id: str | None = None
    conversation_type: str | None = None
    user_id: str | None = None
    user_aad_id: str | None = None
    user_name: str | None = None
    bot_id: str | None = None
    bot_name: str | None = None
    team_id: str | None = None
    team_name: str | None = None
    channel_name: str | None = None
    active: bool = True
    inactive_reason: str | None = None
    first_seen: float = 0.0
    last_seen: float = 0.0

    @classmethod
    def from_row(cls, row: Row) -> ConversationRecord:
        return cls(
            conversation_id=row["conversation_id"],
            channel_id=row["channel_id"],
            service_url=row["service_url"],
            reference=row["reference"],
            tenant_id=row["tenant_id"],
            conversation_type=row["conversation_type"],
            user_id=row["user_id"],
            user_aad_id=row["user_aad_id"],
            user_name=row["user_name"],
            bot_id=row["bot_id"],
            bot_name=row["bot_name"],
            team_id=row["team_id"],
            team_name=row["team_name"],
            channel_name=row["channel_name"],
            active=bool(row["active"]),
            inactive_reason=row["inactive_reason"],
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
        )


class ConversationReferences:
    """Upserted on every inbound activity; read by everything that messages proactively.

    Two per-process caches save a round trip per turn and per send: records read in the last minute, and
    what this process last wrote per conversation (an identical refresh is skipped). Every write tells every
    process (`Database.notify`) to drop its entries for that conversation, and a read that overlapped any such
    drop is not cached (`_generation`), so no stale record is put back after a newer write, in any replica.
    """

    REFRESH_SECONDS = 60.0
    CACHED_RECORDS = 5_000  # a record with its reference is ~2.5 KB: a broadcast reads a million of them once each

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._fresh: dict[str, tuple[tuple[Any, ...], float]] = {}  # conversation → (what was written, when)
        self._records: dict[str, tuple[ConversationRecord | None, float]] = {}
        self._generation = 0  # bumped by every invalidation
        db.subscribe(CACHE_CHANNEL, self._invalidated)

    def _invalidated(self, payload: str) -> None:
        """A write somewhere (this process or another replica): forget what may be stale."""
        if payload == ANY:
            self._records.clear()
            self._fresh.clear()
        elif payload.startswith("references:"):
            conversation_id = payload.removeprefix("references:")
            self._records.pop(conversation_id, None)
            self._fresh.pop(conversation_id, None)
        else:
            return
        self._generation += 1

    async def _announce(self, conversation_id: str, conn: Connection | None = None) -> None:
        self._invalidated(f"references:{conversation_id}")  # this process at once, the others on commit
        await self._db.notify(CACHE_CHANNEL, f"references:{conversation_id}", conn)

    async def upsert(self, record: ConversationRecord, *, reactivate: bool) -> None:
        """Insert or refresh a conversation (service URL, reference, last speaker).

        `reactivate` is for activities that prove the bot can talk there again (a message, an install);
        other activities refresh the reference without undoing an earlier removal or block. An identical
        record written less than a minute ago is not written again (last_seen is that coarse).
        """
        fingerprint = (record.service_url, record.tenant_id, record.user_id, record.user_aad_id, record.user_name,
                       record.bot_id, record.team_id, record.team_name, record.channel_name,
                       json.dumps(record.reference, sort_keys=True), reactivate)
        seen = self._fresh.get(record.conversation_id)
        mono = self._clock.monotonic()
        if seen is not None and seen[0] == fingerprint and mono - seen[1] < self.REFRESH_SECONDS:
            return
        async with self._db.transaction() as tx:
            await self._write(tx, [record], reactivate, self._clock.now().timestamp())
        if len(self._fresh) > 100_000:
            self._fresh.clear()
        self._fresh[record.conversation_id] = (fingerprint, mono)

    async def upsert_many(self, records: Iterable[ConversationRecord], *, reactivate: bool) -> None:
        """`upsert` for many conversations in one transaction (e.g. importing them; no refresh is skipped)."""
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            await self._write(tx, list(records), reactivate, now)

    async def _write(self, tx: Connection, records: list[ConversationRecord], reactivate: bool, now: float) -> None:
        await tx.executemany(
            """
            INSERT INTO conversation_refs (
                conversation_id, channel_id, service_url, tenant_id, conversation_type,
                user_id, user_aad_id, user_name, bot_id, bot_name, team_id, team_name, channel_name, reference,
                active, inactive_reason, first_seen, last_seen)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, NULL, ?, ?)
            ON CONFLICT (conversation_id) DO UPDATE SET
                channel_id = excluded.channel_id,
                service_url = excluded.service_url,
                tenant_id = COALESCE(excluded.tenant_id, conversation_refs.tenant_id),
                conversation_type = COALESCE(excluded.conversation_type, conversation_refs.conversation_type),
                user_id = COALESCE(excluded.user_id, conversation_refs.user_id),
                user_aad_id = COALESCE(excluded.user_aad_id, conversation_refs.user_aad_id),
                user_name = COALESCE(excluded.user_name, conversation_refs.user_name),
                bot_id = COALESCE(excluded.bot_id, conversation_refs.bot_id),
                bot_name = COALESCE(excluded.bot_name, conversation_refs.bot_name),
                team_id = COALESCE(excluded.team_id, conversation_refs.team_id),
                team_name = COALESCE(excluded.team_name, conversation_refs.team_name),
                channel_name = COALESCE(excluded.channel_name, conversation_refs.channel_name),
                reference = excluded.reference,
                active = CASE WHEN ? = 1 THEN 1 ELSE conversation_refs.active END,
                inactive_reason = CASE WHEN ? = 1 THEN NULL ELSE conversation_refs.inactive_reason END,
                last_seen = excluded.last_seen
            """,
            [(
                record.conversation_id,
                record.channel_id,
                record.service_url,
                record.tenant_id,
                record.conversation_type,
                record.user_id,
                record.user_aad_id,
                record.user_name,
                record.bot_id,
                record.bot_name,
                record.team_id,
                record.team_name,
                record.channel_name,
                json.dumps(record.reference, separators=(",", ":")),
                now,
                now,
                int(reactivate),
                int(reactivate),
            ) for record in records],
        )
        members = [(record.conversation_id, record.user_id, record.user_aad_id, record.user_name, now)
                   for record in records if record.user_id]
        if members:
            await tx.executemany(
                """
                INSERT INTO conversation_members (conversation_id, user_id, user_aad_id, user_name, last_seen)
                VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (conversation_id, user_id) DO UPDATE SET
                    user_aad_id = COALESCE(excluded.user_aad_id, conversation_members.user_aad_id),
                    user_name = COALESCE(excluded.user_name, conversation_members.user_name),
                    last_seen = excluded.last_seen
                """,
                members,
            )
        for record in records:
            await self._announce(record.conversation_id, tx)

    async def add_members(self, conversation_id: str, members: Iterable[tuple[str, str | None, str | None]]) -> None:
        """Record members of a conversation seen in its roster: (Teams user id, AAD object id, name)."""
        now = self._clock.now().timestamp()
        async with self._db.transaction() as tx:
            await tx.executemany(
                """
                INSERT INTO conversation_members (conversation_id, user_id, user_aad_id, user_name, last_seen)
                VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (conversation_id, user_id) DO UPDATE SET
                    user_aad_id = COALESCE(excluded.user_aad_id, conversation_members.user_aad_id),
                    user_name = COALESCE(excluded.user_name, conversation_members.user_name)
                """,
                [(conversation_id, user_id, aad, name, now) for user_id, aad, name in members],
            )

    async def get(self, conversation_id: str, *, fresh: bool = False) -> ConversationRecord | None:
        """The record (cached up to a minute; `fresh`: read now, e.g. before acting on "inactive")."""
        cached = self._records.get(conversation_id)
        if not fresh and cached is not None and self._clock.monotonic() - cached[1] < self.REFRESH_SECONDS:
            return cached[0]
        generation = self._generation
        row = await self._db.fetchone(
            "SELECT * FROM conversation_refs WHERE conversation_id = ?", (conversation_id,)
        )
        record = ConversationRecord.from_row(row) if row else None
        if generation == self._generation:
            self._remember(conversation_id, record)
        return record

    async def get_many(self, conversation_ids: Iterable[str]) -> dict[str, ConversationRecord]:
        """Records by conversation id (unknown ids are left out)."""
        found: dict[str, ConversationRecord] = {}
        missing = []
        now = self._clock.monotonic()
        for conversation_id in dict.fromkeys(conversation_ids):
            cached = self._records.get(conversation_id)
            if cached is not None and now - cached[1] < self.REFRESH_SECONDS:
                if cached[0] is not None:
                    found[conversation_id] = cached[0]
            else:
                missing.append(conversation_id)
        for chunk in chunks(missing):
            generation = self._generation
            rows = await self._db.fetchall(
                f"SELECT * FROM conversation_refs WHERE conversation_id IN ({marks(len(chunk))})", chunk)
            for row in by_name(rows):
                record = ConversationRecord.from_row(row)
                found[record.conversation_id] = record
                if generation == self._generation:
                    self._remember(record.conversation_id, record)
        return found

    def _remember(self, conversation_id: str, record: ConversationRecord | None) -> None:
        """The read cache (see the class docstring for why it cannot hold a stale record)."""
        if len(self._records) > self.CACHED_RECORDS:
            self._records.clear()
        self._records[conversation_id] = (record, self._clock.monotonic())

    async def for_user(self, user_id: str, *, active_only: bool = True) -> list[ConversationRecord]:
        """Conversations a user takes part in, by Teams user id or AAD object id; 1:1 chats first."""
        rows = await self._db.fetchall(
            f"""
            SELECT r.* FROM conversation_refs r
            JOIN conversation_members m ON m.conversation_id = r.conversation_id
            WHERE (m.user_id = ? OR m.user_aad_id = ?) {"AND r.active = 1" if active_only else ""}
            ORDER BY CASE r.conversation_type WHEN 'personal' THEN 0 ELSE 1 END, r.last_seen DESC
            """,
            (user_id, user_id),
        )
        return [ConversationRecord.from_row(r) for r in rows]

    async def member_name(self, conversation_id: str, user_id: str) -> str | None:
        """The display name a member of a conversation was last seen with, or None."""
        row = await self._db.fetchone(
            "SELECT user_name FROM conversation_members WHERE conversation_id = ? AND user_id = ?",
            (conversation_id, user_id),
        )
        return str(row["user_name"]) if row and row["user_name"] else None

    async def teams_user_id(self, user_id: str) -> str | None:
        """The Teams user id ("29:…") of a member known by Teams id or AAD object id, or None."""
        row = await self._db.fetchone(
            "SELECT user_id FROM conversation_members WHERE user_id = ? OR user_aad_id = ? "
            "ORDER BY last_seen DESC LIMIT 1",
            (user_id, user_id),
        )
        return str(row["user_id"]) if row else None

    async def all(self, *, active_only: bool = True, tenant_id: str | None = None) -> list[ConversationRecord]:
        clauses, params = [], []
        if active_only:
            clauses.append("active = 1")
        if tenant_id is not None:
            clauses.append("tenant_id = ?")
            params.append(tenant_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._db.fetchall(f"SELECT * FROM conversation_refs {where} ORDER BY first_seen", params)
        return [ConversationRecord.from_row(r) for r in rows]

    async def team(self, team_id: str) -> ConversationRecord | None:
        """An active channel of a team the bot is in (the team's id is its General channel's), newest first."""
        row = await self._db.fetchone(
            "SELECT * FROM conversation_refs WHERE active = 1 AND conversation_type = 'channel' "
            "AND (team_id = ? OR conversation_id = ?) ORDER BY last_seen DESC LIMIT 1", (team_id, team_id))
        return ConversationRecord.from_row(row) if row else None

    async def tenant_service_url(self, tenant_id: str) -> str | None:
        """The Bot Connector URL last seen for a tenant (where to open a chat with someone new there), or None."""
        row = await self._db.fetchone(
            "SELECT service_url FROM conversation_refs WHERE tenant_id = ? ORDER BY last_seen DESC LIMIT 1",
            (tenant_id,))
        return str(row["service_url"]) if row else None

    async def reachable(self, after: str = "", limit: int = 1000) -> list[tuple[str, str | None]]:
        """(conversation id, tenant id) of up to `limit` active conversations after `after`, in conversation id
        order: a page of what a broadcast to everyone targets, without reading (and parsing) whole records."""
        rows = await self._db.fetchall(
            "SELECT conversation_id, tenant_id FROM conversation_refs WHERE active = 1 AND conversation_id > ? "
            "ORDER BY conversation_id LIMIT ?", (after, limit))
        return [(str(r["conversation_id"]), r["tenant_id"]) for r in rows]

    async def mark_inactive(self, conversation_id: str, reason: str) -> bool:
        """Stop treating a conversation as reachable (uninstalled, blocked, not found). True if it changed."""
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE conversation_refs SET active = 0, inactive_reason = ? WHERE conversation_id = ? AND active = 1",
                (reason, conversation_id),
            )
            await self._announce(conversation_id, tx)
        return changed > 0
