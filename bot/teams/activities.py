"""Translate between the SDK's activities/ConversationReference and the SDK-free `ConversationRecord`.

A channel's threads are one record: the channel's (`state.model.conversation_key`), with the team and
channel from channelData.
"""

from __future__ import annotations

from typing import Any

from botbuilder.core import TurnContext
from botbuilder.schema import Activity, ConversationReference, Mention

from dialogs.welcome_card import InstallContext
from state.model import conversation_key
from state.references import ConversationRecord

from .wire import to_json


def tenant_of(activity: Activity) -> str | None:
    """Teams puts the tenant in channelData.tenant.id (the SDK loses conversation.tenantId on parse)."""
    channel_data: Any = activity.channel_data
    if isinstance(channel_data, dict):
        tenant = channel_data.get("tenant")
        if isinstance(tenant, dict) and tenant.get("id"):
            return str(tenant["id"])
    conversation = activity.conversation
    tenant_id = getattr(conversation, "tenant_id", None) if conversation else None
    return str(tenant_id) if tenant_id else None


def _named(channel_data: Any, key: str) -> dict[str, Any]:
    """channelData's `team` or `channel` object (`{}` when absent)."""
    value = channel_data.get(key) if isinstance(channel_data, dict) else None
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return str(value) if value else None


def record_from_activity(activity: Activity) -> ConversationRecord | None:
    """The record to upsert for an inbound activity; None when it names no conversation to reach.

    An activity from a channel thread records the channel: proactive sends there start a new post."""
    conversation = activity.conversation
    if conversation is None or not conversation.id or not activity.service_url:
        return None
    tenant_id = tenant_of(activity)
    key = conversation_key(conversation.id)
    reference = TurnContext.get_conversation_reference(activity)
    reference.activity_id = None  # proactive sends start new threads; the id of one message is noise here
    if reference.conversation is not None:
        reference.conversation.id = key
        if tenant_id:
            reference.conversation.tenant_id = tenant_id
    sender = activity.from_property
    bot = activity.recipient
    team, channel = _named(activity.channel_data, "team"), _named(activity.channel_data, "channel")
    return ConversationRecord(
        conversation_id=key,
        channel_id=activity.channel_id or "msteams",
        service_url=activity.service_url,
        reference=to_json(reference),
        tenant_id=tenant_id,
        conversation_type=conversation.conversation_type,
        user_id=sender.id if sender else None,
        user_aad_id=sender.aad_object_id if sender else None,
        user_name=sender.name if sender else None,
        bot_id=bot.id if bot else None,
        bot_name=bot.name if bot else None,
        team_id=_text(team.get("id")),
        team_name=_text(team.get("name")),
        channel_name=_text(channel.get("name")),
    )


def activity_from_json(payload: dict[str, Any]) -> Activity:
    """An outbox payload as an SDK Activity. Mention entities become `Mention`s: a plain `Entity` would
    serialise as `{"type": "mention"}` alone, and Teams would not render the @mention."""
    activity = Activity().deserialize(payload)
    raw = payload.get("entities")
    if isinstance(raw, list) and activity.entities and len(raw) == len(activity.entities):
        activity.entities = [Mention().deserialize(given) if isinstance(given, dict) and given.get("type") == "mention"
                             else entity for given, entity in zip(raw, activity.entities, strict=True)]
    return activity


def reference_from_record(record: ConversationRecord) -> ConversationReference:
    """The SDK reference to `continue_conversation` with."""
    reference = ConversationReference().deserialize(record.reference)
    reference.service_url = record.service_url
    if reference.conversation is not None:
        reference.conversation.id = record.conversation_id  # a channel's, even if recorded from a thread
        if record.tenant_id:
            reference.conversation.tenant_id = record.tenant_id
    return reference


def team_id_of(channel_data: Any) -> str | None:
    team = channel_data.get("team") if isinstance(channel_data, dict) else None
    return str(team["id"]) if isinstance(team, dict) and team.get("id") else None


def install_context(channel_data: Any, conversation_type: str | None, installer: str | None,
                    known: ConversationRecord | None = None) -> InstallContext:
    """Where the bot was added, from the activity's channelData (team and channel names), or from what the
    conversation's record already knows when this activity does not say."""
    team, channel = _named(channel_data, "team"), _named(channel_data, "channel")
    if team or channel or conversation_type == "channel":
        return InstallContext("team", installer, _text(team.get("name")) or (known.team_name if known else None),
                              _text(channel.get("name")) or (known.channel_name if known else None))
    if conversation_type == "groupChat":
        return InstallContext("groupChat", installer)
    return InstallContext("personal", installer)
