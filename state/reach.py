"""People the bot reaches for the first time: the steps of installing the app for them, durably.

One row per (tenant, AAD object id) the bot had to go beyond the Bot Connector for: `installing` (Teams said
the app is not installed for them; a Graph install is due at `not_before`), `installed` (Graph installed it,
or it already was), `not installed` (PROACTIVE_INSTALL is off), `forbidden` (Graph refused: no admin consent,
or the app is blocked), `failed` (anything else Graph will not do, e.g. an unknown user). Installs are
claimed with a lease like outbox rows, so on several replicas each runs once and a dead replica's claims
are taken over.

While a person is `installing`, the notices for them wait in the outbox as `held` rows whose note is
`PARKED` (`release_parked` / `fail_parked` end the wait); the batch status counts a batch's rows by their
person's step (`batch_steps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .clock import Clock
from .db import Connection, Database, Row

STEPS = ("installing", "installed", "not installed", "forbidden", "failed")
PARKED = "installing: waiting for the app to be installed for this person"
"""The note (`last_error`) of an outbox row held until its person's install is done."""


@dataclass(frozen=True)
class Person:
    tenant_id: str
    user_id: str
    state: str
    attempts: int
    not_before: float
    last_error: str | None
    updated_at: float = 0.0

    @classmethod
    def from_row(cls, row: Row) -> Person:
        return cls(row["tenant_id"], row["user_id"], row["state"], int(row["attempts"]), float(row["not_before"]),
                   row["last_error"], float(row["updated_at"]))


class ReachStore:
    """The `reach_people` table, and the outbox rows parked behind an install."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def _now(self) -> float:
        return self._clock.now().timestamp()

    async def get(self, tenant_id: str, user_id: str) -> Person | None:
        row = await self._db.fetchone("SELECT * FROM reach_people WHERE tenant_id = ? AND user_id = ?",
                                      (tenant_id, user_id))
        return Person.from_row(row) if row else None

    async def start_install(self, tenant_id: str, user_id: str) -> bool:
        """Make an install for this person due now; False when one is already under way (nothing changed)."""
        now = self._now()
        changed = await self._db.execute(
            "INSERT INTO reach_people (tenant_id, user_id, state, attempts, not_before, created_at, updated_at) "
            "VALUES (?, ?, 'installing', 0, ?, ?, ?) ON CONFLICT (tenant_id, user_id) DO UPDATE SET "
            "state = 'installing', attempts = 0, not_before = excluded.not_before, last_error = NULL, "
            "claimed_by = NULL, claim_until = NULL, updated_at = excluded.updated_at "
            "WHERE reach_people.state <> 'installing'",
            (tenant_id, user_id, now, now, now))
        return changed > 0

    async def record(self, tenant_id: str, user_id: str, state: str, error: str | None = None, *,
                     tx: Connection | None = None) -> None:
        """Set a person's step (and why), ending any claim on them; on `tx` to commit with other writes."""
        if state not in STEPS:
            raise ValueError(f"unknown reach step {state!r}")
        now = self._now()
        await (tx or self._db).execute(
            "INSERT INTO reach_people (tenant_id, user_id, state, attempts, not_before, last_error, created_at, "
            "updated_at) VALUES (?, ?, ?, 0, ?, ?, ?, ?) ON CONFLICT (tenant_id, user_id) DO UPDATE SET "
            "state = excluded.state, last_error = excluded.last_error, claimed_by = NULL, claim_until = NULL, "
            "updated_at = excluded.updated_at",
            (tenant_id, user_id, state, now, error, now, now))

    async def claim_due(self, owner: str, lease_s: float, limit: int) -> list[Person]:
        """Claim up to `limit` due installs nobody else holds (or whose holder's lease ran out). The owner's own
        claims count as free: one process runs one pass at a time, so a claim of its own is a previous life's
        (the same REPLICA_ID restarted after a crash), taken back at once."""
        now = self._now()
        rows = await self._db.fetchall(
            "SELECT tenant_id, user_id FROM reach_people WHERE state = 'installing' AND not_before <= ? "
            "AND (claimed_by IS NULL OR claim_until < ? OR claimed_by = ?) ORDER BY not_before LIMIT ?",
            (now, now, owner, limit))
        claimed: list[Person] = []
        for row in rows:
            taken = await self._db.fetchone(
                "UPDATE reach_people SET claimed_by = ?, claim_until = ?, attempts = attempts + 1 "
                "WHERE tenant_id = ? AND user_id = ? AND state = 'installing' "
                "AND (claimed_by IS NULL OR claim_until < ? OR claimed_by = ?) RETURNING *",
                (owner, now + lease_s, row["tenant_id"], row["user_id"], now, owner))
            if taken is not None:
                claimed.append(Person.from_row(taken))
        return claimed

    async def defer(self, tenant_id: str, user_id: str, until: float, error: str, *, attempt: bool = True) -> None:
        """Try the install again at `until` (throttled, Graph or the identity service unavailable);
        `attempt=False`: it was never tried (it waited for its turn), so the claim's attempt does not count."""
        if not math.isfinite(until):
            raise ValueError(f"an install must be deferred to a time, got {until}")
        await self._db.execute(
            "UPDATE reach_people SET not_before = ?, last_error = ?, claimed_by = NULL, claim_until = NULL, "
            f"updated_at = ?{'' if attempt else ', attempts = attempts - 1'} "
            "WHERE tenant_id = ? AND user_id = ? AND state = 'installing'",
            (until, error, self._now(), tenant_id, user_id))

    async def next_due(self) -> float | None:
        row = await self._db.fetchone("SELECT MIN(not_before) AS due FROM reach_people WHERE state = 'installing'")
        return float(row["due"]) if row and row["due"] is not None else None

    async def release_parked(self, tenant_id: str, user_id: str) -> list[int]:
        """Make the outbox rows parked behind this person's install pending again; returns their ids."""
        now = self._now()
        rows = await self._db.fetchall(
            "UPDATE outbox SET status = 'pending', not_before = ?, last_error = NULL, updated_at = ? "
            "WHERE status = 'held' AND tenant_id = ? AND target_user_id = ? AND last_error = ? RETURNING id",
            (now, now, tenant_id, user_id, PARKED))
        return sorted(int(r["id"]) for r in rows)

    async def fail_parked(self, tenant_id: str, user_id: str, error: str) -> int:
        """The install will not happen: the rows parked behind it fail with `error`; returns how many."""
        now = self._now()
        return await self._db.execute(
            "UPDATE outbox SET status = 'failed', last_error = ?, updated_at = ? "
            "WHERE status = 'held' AND tenant_id = ? AND target_user_id = ? AND last_error = ?",
            (error, now, tenant_id, user_id, PARKED))

    async def settle_parked(self) -> list[int]:
        """Self-healing for parked rows: those whose person is installed, or has no install under way any more
        (e.g. the worker parked one but could not make the install due), go back to pending; those whose
        person's install will not happen fail with the person's reason. Returns the ids made pending."""
        now = self._now()
        await self._db.execute(
            "UPDATE outbox SET status = 'failed', updated_at = ?, last_error = (SELECT p.state || ': ' || "
            "COALESCE(p.last_error, '') FROM reach_people p WHERE p.tenant_id = outbox.tenant_id AND p.user_id = "
            "outbox.target_user_id) WHERE status = 'held' AND last_error = ? AND EXISTS (SELECT 1 FROM reach_people p "
            "WHERE p.tenant_id = outbox.tenant_id AND p.user_id = outbox.target_user_id "
            "AND p.state IN ('not installed', 'forbidden', 'failed'))", (now, PARKED))
        rows = await self._db.fetchall(
            "UPDATE outbox SET status = 'pending', not_before = ?, last_error = NULL, updated_at = ? "
            "WHERE status = 'held' AND last_error = ? AND NOT EXISTS (SELECT 1 FROM reach_people p "
            "WHERE p.tenant_id = outbox.tenant_id AND p.user_id = outbox.target_user_id AND p.state = 'installing') "
            "RETURNING id", (now, now, PARKED))
        return sorted(int(r["id"]) for r in rows)

    async def batch_steps(self, batch_id: str) -> dict[str, int]:
        """A notify batch's rows counted by their person's reach step (people reached as before: not counted)."""
        rows = await self._db.fetchall(
            "SELECT p.state AS state, COUNT(*) AS n FROM broadcasts b JOIN outbox o ON o.broadcast_id = b.id "
            "JOIN reach_people p ON p.tenant_id = o.tenant_id AND p.user_id = o.target_user_id "
            "WHERE b.public_id = ? GROUP BY p.state",
            (batch_id,))
        return {str(r["state"]): int(r["n"]) for r in rows}

    async def counts(self) -> dict[str, int]:
        rows = await self._db.fetchall("SELECT state, COUNT(*) AS n FROM reach_people GROUP BY state")
        return {str(r["state"]): int(r["n"]) for r in rows}
