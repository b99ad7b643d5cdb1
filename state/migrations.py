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
)
