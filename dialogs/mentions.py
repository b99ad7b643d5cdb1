"""@mentions in messages to group chats and channels: `<at>Name</at>` in the text plus a mention entity.

Teams renders the mention only when both agree: an entity
`{"type": "mention", "mentioned": {"id": <user id>, "name": …}, "text": "<at>Name</at>"}` and the same
`<at>Name</at>` in the activity's text. Plain JSON, so the payloads stay what the outbox stores.
"""

from __future__ import annotations

import re
from html import escape, unescape
from typing import Any

from state.model import UserRef

_TAG = re.compile(r"<at>(.*?)</at>", re.S)


def mention_tag(name: str) -> str:
    """`<at>Name</at>` (the name HTML-escaped, as Teams expects it inside the tag)."""
    return f"<at>{escape(name, quote=False)}</at>"


def with_mention(payload: dict[str, Any], user: UserRef, lead: str = "") -> dict[str, Any]:
    """A copy of an activity payload that starts its text with an @mention of `user` (then `lead`)."""
    name = user.name or "you"
    tag = mention_tag(name)
    text = " ".join(part for part in (tag + lead, payload.get("text") or "") if part)
    entity = {"type": "mention", "mentioned": {"id": user.id, "name": name}, "text": tag}
    return {**payload, "text": text, "entities": [*(payload.get("entities") or []), entity]}


def mentioned(payload: dict[str, Any]) -> UserRef | None:
    """Who a payload @mentions first, or None."""
    for entity in payload.get("entities") or []:
        person = entity.get("mentioned") if isinstance(entity, dict) and entity.get("type") == "mention" else None
        if isinstance(person, dict) and person.get("id"):
            return UserRef(str(person["id"]), name=str(person.get("name") or "") or None)
    return None


def plain(text: str) -> str:
    """Text with `<at>Name</at>` tags reduced to the name (for places that cannot render a mention)."""
    return _TAG.sub(lambda match: unescape(match.group(1)), text)
