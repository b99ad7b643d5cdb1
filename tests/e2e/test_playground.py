"""The foundation, end to end: the real Agents Playground talks to `python main.py` over HTTP."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from playground import Playground

pytestmark = pytest.mark.e2e

COMMANDS = ("watch", "list", "unwatch", "analyze", "status", "mute", "unmute")


def stored_reference(database: Path, conversation_id: str) -> dict[str, Any] | None:
    """The bot's conversation_refs row for `conversation_id`, read straight from its SQLite file."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        connection.row_factory = sqlite3.Row
        row = connection.execute(
            "SELECT * FROM conversation_refs WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()
        return dict(row) if row is not None else None
    finally:
        connection.close()


async def test_help_lists_every_command(playground: Playground) -> None:
    sent = await playground.send_text("help")

    reply = await playground.wait_for_message(after=sent)
    delivery = await playground.wait_for_delivery("message", after=sent)

    assert delivery.ok, f"the bot answered the message with {delivery}"
    missing = [c for c in COMMANDS if not re.search(rf"\b{c}\b", reply.text)]
    assert not missing, f"help does not mention {missing}: {reply.text!r}"
    assert reply.conversation_id == playground.conversation_id
    assert not playground.connector_errors


async def test_install_is_delivered_and_the_conversation_is_remembered(
    playground: Playground, bot_process: Any
) -> None:
    mark = await playground.install()

    install = await playground.wait_for_delivery("installationUpdate", after=mark)
    members = await playground.wait_for_delivery("conversationUpdate", after=mark)

    assert install.activity.get("action") == "add"
    assert install.ok, f"installationUpdate failed in the bot: {install}"
    assert members.ok, f"conversationUpdate failed in the bot: {members}"
    assert not playground.connector_errors
    # The bot stores the reference before it answers the activity, so it is there now.
    reference = stored_reference(bot_process.database, playground.conversation_id)
    assert reference is not None, "no conversation reference stored for the personal chat"
    assert reference["service_url"] == install.activity["serviceUrl"] == playground.service_url
    assert reference["channel_id"] == "msteams"
    assert reference["tenant_id"] == playground.tenant_id
    assert reference["active"] == 1


async def test_uninstall_marks_the_conversation_inactive(playground: Playground, bot_process: Any) -> None:
    await playground.wait_for_delivery("installationUpdate", after=await playground.install())

    removal = await playground.wait_for_delivery("installationUpdate", after=await playground.uninstall())

    assert removal.activity.get("action") == "remove"
    assert removal.ok, f"installationUpdate remove failed in the bot: {removal}"
    reference = stored_reference(bot_process.database, playground.conversation_id)
    assert reference is not None and reference["active"] == 0, reference
