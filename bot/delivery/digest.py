"""One message out of several held ones: what went out when a topic ended, instead of a burst."""

from __future__ import annotations

from typing import Any

from dialogs.mentions import mentioned, plain, with_mention
from state.outbox import OutboxRow

CARD = "application/vnd.microsoft.card.adaptive"


def _parts(row: OutboxRow) -> list[dict[str, Any]]:
    """Adaptive Card elements that show one held message."""
    payload = row.payload
    elements: list[dict[str, Any]] = []
    if payload.get("text"):
        elements.append({"type": "TextBlock", "text": plain(str(payload["text"])), "wrap": True})
    for attachment in payload.get("attachments") or []:
        content = attachment.get("content") if isinstance(attachment, dict) else None
        if attachment.get("contentType") == CARD and isinstance(content, dict):
            elements += list(content.get("body") or [])
            if content.get("actions"):
                elements.append({"type": "ActionSet", "actions": list(content["actions"])})
    return elements or [{"type": "TextBlock", "text": "(an update)", "wrap": True}]


def digest_payload(rows: list[OutboxRow], *, resume_prompt: str | None = None) -> dict[str, Any]:
    """A single message carrying every held item, newest last; optionally re-asks a pending question.
    Items held for one member of a group chat or channel @mention them: so does their digest."""
    title = f"While we were talking, {len(rows)} updates arrived" if len(rows) > 1 else "While we were talking"
    body: list[dict[str, Any]] = [{"type": "TextBlock", "text": title, "weight": "Bolder", "wrap": True}]
    for row in rows:
        body.append({"type": "Container", "separator": True, "spacing": "Medium", "items": _parts(row)})
    if resume_prompt:
        body.append({"type": "TextBlock", "separator": True, "wrap": True,
                     "text": f"Back to where we were: {resume_prompt}"})
    card = {"type": "AdaptiveCard", "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "version": "1.5", "body": body}
    summary = "; ".join(plain(str(r.payload.get("text") or "an update"))[:80] for r in rows)
    payload = {"type": "message", "summary": summary, "attachments": [{"contentType": CARD, "content": card}]}
    addressee = next((person for row in rows if (person := mentioned(row.payload)) is not None), None)
    return payload if addressee is None else with_mention(payload, addressee)
