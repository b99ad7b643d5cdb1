"""Translate between the SDK's activities/ConversationReference and the SDK-free `ConversationRecord`."""

from __future__ import annotations

from typing import Any

from botbuilder.core import TurnContext
from botbuilder.schema import Activity, ConversationReference

from dialogs.welcome_card import InstallContext
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


def record_from_activity(activity: Activity) -> ConversationRecord | None:
    """The record to upsert for an inbound activity; None when it names no conversation to reach."""
    conversation = activity.conversation
    if conversation is None or not conversation.id or not activity.service_url:
        return None
    tenant_id = tenant_of(activity)
    reference = TurnContext.get_conversation_reference(activity)
    reference.activity_id = None  # proactive sends start new threads; the id of one message is noise here
    if reference.conversation is not None and tenant_id:
        reference.conversation.tenant_id = tenant_id
    sender = activity.from_property
    bot = activity.recipient
    return ConversationRecord(
        conversation_id=conversation.id,
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
    )


def reference_from_record(record: ConversationRecord) -> ConversationReference:
    """The SDK reference to `continue_conversation` with."""
    reference = ConversationReference().deserialize(record.reference)
    reference.service_url = record.service_url
    if reference.conversation is not None and record.tenant_id:
        reference.conversation.tenant_id = record.tenant_id
    return reference


def team_id_of(channel_data: Any) -> str | None:
    team = channel_data.get("team") if isinstance(channel_data, dict) else None
    return str(team["id"]) if isinstance(team, dict) and team.get("id") else None


def install_context(channel_data: Any, conversation_type: str | None, installer: str | None) -> InstallContext:
    """Where the bot was added, from the activity's channelData (team and channel names)."""
    data = channel_data if isinstance(channel_data, dict) else {}
    team = data.get("team") if isinstance(data.get("team"), dict) else None
    channel = data.get("channel") if isinstance(data.get("channel"), dict) else None
    if team is not None or conversation_type == "channel":
        return InstallContext("team", installer, (team or {}).get("name"), (channel or {}).get("name"))
    if conversation_type == "groupChat":
        return InstallContext("groupChat", installer)
    return InstallContext("personal", installer)
