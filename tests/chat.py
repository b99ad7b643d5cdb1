"""Talk to a running bot over HTTP as Teams would, with the connector double as the serviceUrl."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import aiohttp

from bot.app import BotApplication
from tests.connector_double import ConnectorDouble

_ids = itertools.count(1)


class Chat:
    """One conversation with the bot: post activities, read what the bot sent back."""

    def __init__(self, http: aiohttp.ClientSession, app: BotApplication, double: ConnectorDouble,
                 conversation_id: str = "dm-ada", user_id: str = "29:ada", kind: str = "personal",
                 channel_data: dict[str, Any] | None = None,
                 authorization: Callable[[dict[str, Any]], str] | None = None,
                 user_name: str = "Ada Lovelace") -> None:
        self.http, self.app, self.double = http, app, double
        self.conversation_id, self.user_id, self.kind = conversation_id, user_id, kind
        self.user_name = user_name
        self.channel_data = channel_data or {"tenant": {"id": "t1"}}
        self.authorization = authorization  # activity → Authorization header (as the channel signs it)

    def activity(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {
            "type": type_, "id": f"act-{next(_ids)}", "channelId": "msteams", "serviceUrl": self.double.url,
            "conversation": {"id": self.conversation_id, "conversationType": self.kind},
            "from": {"id": self.user_id, "name": self.user_name, "aadObjectId": f"aad-{self.user_id}"},
            "recipient": {"id": "28:bot", "name": "Price Watch"},
            "channelData": self.channel_data, **fields,
        }

    async def post(self, activity: dict[str, Any]) -> int:
        url = f"http://127.0.0.1:{self.app.port}/api/messages"
        headers = {"Authorization": self.authorization(activity)} if self.authorization else None
        async with self.http.post(url, json=activity, headers=headers) as response:
            await response.read()
            return response.status

    async def say(self, text: str) -> None:
        assert await self.post(self.activity("message", text=text)) == 200

    async def press(self, data: dict[str, Any]) -> None:
        assert await self.post(self.activity("message", value=data)) == 200

    async def install(self) -> None:
        assert await self.post(self.activity("installationUpdate", action="add")) == 200

    async def uninstall(self) -> None:
        assert await self.post(self.activity("installationUpdate", action="remove")) == 200

    async def settle(self) -> None:
        """Let the outbox deliver everything that may go now."""
        worker = self.app.worker
        for _ in range(5):
            worker.pump()
            await worker.idle()
        await worker.flush()

    def texts(self) -> list[str]:
        """Everything the bot posted here, oldest first: text, or the card's text blocks joined."""
        out = []
        for activity in self.double.sent_activities(self.conversation_id):
            parts = [activity.get("text") or ""]
            for attachment in activity.get("attachments") or []:
                parts += _card_texts(attachment.get("content") or {})
            out.append(" ".join(p for p in parts if p))
        return out

    def cards(self) -> list[dict[str, Any]]:
        return [a["content"] for act in self.double.sent_activities(self.conversation_id)
                for a in act.get("attachments") or [] if a.get("contentType", "").endswith("adaptive")]


def _card_texts(element: Any) -> list[str]:
    if isinstance(element, dict):
        found = [str(element["text"])] if isinstance(element.get("text"), str) else []
        found += [f"{f.get('title')}: {f.get('value')}" for f in element.get("facts") or []]
        for key in ("body", "items", "columns", "actions", "card"):
            for child in element.get(key) or []:
                found += _card_texts(child)
        if isinstance(element.get("title"), str) and element.get("type", "").startswith("Action."):
            found.append(element["title"])
        return found
    return []
