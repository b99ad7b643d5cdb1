"""Versioned schema. Append a new `Migration` for every change; never edit one that has shipped."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "bot state and conversation references",
        """
        CREATE TABLE bot_state (
            key        TEXT PRIMARY KEY,
            etag       INTEGER NOT NULL,
            data       TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE conversation_refs (
            conversation_id   TEXT PRIMARY KEY,
            channel_id        TEXT NOT NULL,
            service_url       TEXT NOT NULL,
            tenant_id         TEXT,
            conversation_type TEXT,
            user_id           TEXT,
            user_aad_id       TEXT,
            user_name         TEXT,
            bot_id            TEXT,
            bot_name          TEXT,
            reference         TEXT NOT NULL,
            active            INTEGER NOT NULL DEFAULT 1,
            inactive_reason   TEXT,
            first_seen        TEXT NOT NULL,
            last_seen         TEXT NOT NULL
        );
        CREATE INDEX conversation_refs_user ON conversation_refs (user_id);
        CREATE INDEX conversation_refs_user_aad ON conversation_refs (user_aad_id);
        CREATE INDEX conversation_refs_tenant ON conversation_refs (tenant_id);
        CREATE TABLE conversation_members (
            conversation_id TEXT NOT NULL REFERENCES conversation_refs (conversation_id) ON DELETE CASCADE,
            user_id         TEXT NOT NULL,
            user_aad_id     TEXT,
            user_name       TEXT,
            last_seen       TEXT NOT NULL,
            PRIMARY KEY (conversation_id, user_id)
        );
        CREATE INDEX conversation_members_user ON conversation_members (user_id);
        CREATE INDEX conversation_members_aad ON conversation_members (user_aad_id);
        """,
    ),
    Migration(
        2,
        "scheduled jobs",
        """
        CREATE TABLE scheduled_jobs (
            id          TEXT PRIMARY KEY NOT NULL,
            key         TEXT,
            handler     TEXT NOT NULL,
            payload     TEXT NOT NULL,
            due_at      TEXT NOT NULL,
            slot_at     TEXT,
            interval_s  REAL,
            jitter_s    REAL NOT NULL DEFAULT 0,
            misfire     TEXT NOT NULL DEFAULT 'run_late' CHECK (misfire IN ('run_late', 'skip')),
            grace_s     REAL NOT NULL,
            state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'dead')),
            attempts    INTEGER NOT NULL DEFAULT 0,
            lease_until TEXT,
            last_error  TEXT,
            created_at  TEXT NOT NULL
        );
        CREATE UNIQUE INDEX scheduled_jobs_key ON scheduled_jobs (key) WHERE key IS NOT NULL;
        CREATE INDEX scheduled_jobs_dead ON scheduled_jobs (due_at) WHERE state = 'dead'
        """,
    ),
    Migration(
        3,
        "proactive outbox",
        """
        CREATE TABLE outbox (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            dedup_key       TEXT UNIQUE,
            conversation_id TEXT,
            target_user_id  TEXT,
            tenant_id       TEXT,
            kind            TEXT NOT NULL DEFAULT 'send' CHECK (kind IN ('send', 'update')),
            update_of       INTEGER REFERENCES outbox (id),
            payload         TEXT NOT NULL,
            category        TEXT NOT NULL DEFAULT 'notification',
            subject         TEXT,
            priority        INTEGER NOT NULL DEFAULT 0,
            status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN
                                ('pending', 'held', 'sent', 'failed', 'dropped', 'expired', 'cancelled',
                                 'superseded', 'merged')),
            not_before      REAL NOT NULL,
            expires_at      REAL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            last_error      TEXT,
            activity_id     TEXT,
            created_at      REAL NOT NULL,
            updated_at      REAL NOT NULL,
            sent_at         REAL,
            CHECK (conversation_id IS NOT NULL OR target_user_id IS NOT NULL)
        );
        CREATE INDEX outbox_pending ON outbox (status, not_before) WHERE status IN ('pending', 'held');
        CREATE INDEX outbox_conversation ON outbox (conversation_id, status)
        """,
    ),
    Migration(
        4,
        "engagement and notification preferences",
        """
        CREATE TABLE engagement (
            conversation_id TEXT PRIMARY KEY,
            state           TEXT NOT NULL DEFAULT 'idle',
            pending_prompt  TEXT,
            welcomed        INTEGER NOT NULL DEFAULT 0,
            updated_at      REAL NOT NULL
        );
        CREATE TABLE preferences (
            subject     TEXT PRIMARY KEY,
            muted       INTEGER NOT NULL DEFAULT 0,
            muted_until REAL,
            updated_at  REAL NOT NULL
        );
        CREATE TABLE counters (
            name  TEXT PRIMARY KEY,
            value INTEGER NOT NULL DEFAULT 0
        )
        """,
    ),
    Migration(
        5,
        "price watches",
        """
        CREATE TABLE watches (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id         TEXT NOT NULL,
            user_aad_id     TEXT,
            user_name       TEXT,
            conversation_id TEXT NOT NULL,
            product         TEXT NOT NULL,
            product_key     TEXT NOT NULL,
            condition       TEXT NOT NULL,
            last_price      TEXT,
            last_alert_price TEXT,
            snoozed_until   REAL,
            created_at      REAL NOT NULL,
            updated_at      REAL NOT NULL,
            UNIQUE (user_id, product_key)
        );
        CREATE INDEX watches_product ON watches (product_key);
        CREATE TABLE price_observations (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            product_key TEXT NOT NULL,
            product     TEXT NOT NULL,
            price       TEXT NOT NULL,
            currency    TEXT,
            source      TEXT NOT NULL,
            url         TEXT,
            observed_at REAL NOT NULL
        );
        CREATE INDEX price_observations_product ON price_observations (product_key, observed_at);
        CREATE TABLE analyses (
            id              TEXT PRIMARY KEY,
            user_id         TEXT NOT NULL,
            conversation_id TEXT NOT NULL,
            tenant_id       TEXT,
            product         TEXT NOT NULL,
            product_key     TEXT NOT NULL,
            status          TEXT NOT NULL CHECK (status IN ('running', 'done', 'cancelled', 'failed')),
            started_at      REAL NOT NULL,
            due_at          REAL NOT NULL,
            progress_row    INTEGER,
            result          TEXT,
            updated_at      REAL NOT NULL
        );
        CREATE INDEX analyses_user ON analyses (user_id, status)
        """,
    ),
    Migration(
        6,
        "notify batches: which outbox rows one POST /api/notify queued",
        """
        ALTER TABLE outbox ADD COLUMN batch_id TEXT;
        CREATE INDEX outbox_batch ON outbox (batch_id, status);
        CREATE TABLE notify_batches (
            id          TEXT PRIMARY KEY,
            created_at  DOUBLE PRECISION NOT NULL,
            requested   INTEGER NOT NULL
        )
        """,
    ),
)
