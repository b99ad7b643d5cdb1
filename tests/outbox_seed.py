"""Seed a bot database with conversation references, for outbox tests and `bench/fanout.py`.

Writes through the bot's own `ConversationReferences` on a `Database` file before the bot starts, so
`POST /api/notify` with `{"to": {"all": true}}` reaches every seeded conversation.
"""

from __future__ import annotations

from collections.abc import Sequence

from state.clock import SystemClock
from state.db import connect
from state.references import ConversationRecord, ConversationReferences

Conversation = tuple[str, str]  # (conversation id, tenant id)
BOT_ID = "28:fanout-bot"


def conversation_ids(tenants: int, per_tenant: int, prefix: str = "a:fanout") -> list[Conversation]:
    """`tenants` x `per_tenant` personal conversations, tenant by tenant."""
    return [
        (f"{prefix}-{t:02d}-{i:05d}", f"tenant-{t:02d}") for t in range(tenants) for i in range(per_tenant)
    ]


def record(conversation_id: str, tenant_id: str, service_url: str) -> ConversationRecord:
    """A 1:1 conversation with one user, reachable at `service_url`, as an inbound activity would leave it."""
    user_id = "29:user-" + conversation_id.rsplit(":", 1)[-1]
    reference = {
        "bot": {"id": BOT_ID, "name": "Fanout Bot"},
        "user": {"id": user_id, "name": "User"},
        "conversation": {"id": conversation_id, "conversationType": "personal", "tenantId": tenant_id},
        "channelId": "msteams",
        "serviceUrl": service_url,
    }
    return ConversationRecord(
        conversation_id=conversation_id, channel_id="msteams", service_url=service_url, reference=reference,
        tenant_id=tenant_id, conversation_type="personal", user_id=user_id, user_name="User",
        bot_id=BOT_ID, bot_name="Fanout Bot",
    )


async def seed_references(database_url: str, service_url: str, conversations: Sequence[Conversation]) -> None:
    """Create (and migrate) the database at `database_url` and store one reference per conversation."""
    db = connect(database_url)
    await db.open()
    try:
        references = ConversationReferences(db, SystemClock())
        for start in range(0, len(conversations), 1000):
            await references.upsert_many([record(conversation_id, tenant_id, service_url)
                                          for conversation_id, tenant_id in conversations[start:start + 1000]],
                                         reactivate=True)
    finally:
        await db.close()
