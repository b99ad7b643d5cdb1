"""One message out of several held ones: what went out when a topic ended, quiet hours ended, or the daily
digest was due, instead of a burst.

A digest never exceeds the message size the notify API enforces: items that would not fit go into a
second message ("part 2 of 2"), so nothing held is lost.
"""

from __future__ import annotations

import json
from typing import Any

from dialogs.mentions import mentioned, plain, with_mention
from state.model import DAILY_DIGEST, QUIET_HOURS
from state.outbox import OutboxRow

CARD = "application/vnd.microsoft.card.adaptive"
SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
DEFAULT_MAX_BYTES = 28_000
"""The notify API's limit (bot/api/notify.py MAX_MESSAGE_BYTES; bot/app.py passes that constant in)."""


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
                elements.append({"type": "ActionSet", "actions": [_in_digest(a) for a in content["actions"]]})
    return elements or [{"type": "TextBlock", "text": "(an update)", "wrap": True}]


def _in_digest(action: Any) -> Any:
    """A button inside a digest says so (`inDigest`): pressing it must not replace the whole digest."""
    if isinstance(action, dict) and isinstance(action.get("data"), dict):
        return {**action, "data": {**action["data"], "inDigest": True}}
    return action


def reason_of(rows: list[OutboxRow]) -> str | None:
    """Why these rows were held: the daily digest, quiet hours, or (None) a conversation in progress."""
    notes = {r.last_error for r in rows}
    return DAILY_DIGEST if DAILY_DIGEST in notes else QUIET_HOURS if QUIET_HOURS in notes else None


def _title(count: int, reason: str | None) -> str:
    updates = f"{count} update{'' if count == 1 else 's'}"
    if reason == DAILY_DIGEST:
        return f"Your daily digest: {updates}"
    if reason == QUIET_HOURS:
        return f"While your quiet hours were on, {updates} arrived"
    return f"While we were talking, {updates} arrived" if count > 1 else "While we were talking"


def _summary(row: OutboxRow) -> str:
    payload = row.payload
    return plain(str(payload.get("summary") or payload.get("text") or "an update"))[:80]


def _payload(rows: list[OutboxRow], title: str, resume_prompt: str | None) -> dict[str, Any]:
    body: list[dict[str, Any]] = [{"type": "TextBlock", "text": title, "weight": "Bolder", "wrap": True}]
    for row in rows:
        body.append({"type": "Container", "separator": True, "spacing": "Medium", "items": _parts(row)})
    if resume_prompt:
        body.append({"type": "TextBlock", "separator": True, "wrap": True,
                     "text": f"Back to where we were: {resume_prompt}"})
    card = {"type": "AdaptiveCard", "$schema": SCHEMA, "version": "1.5", "body": body}
    summary = "; ".join(_summary(r) for r in rows)
    payload = {"type": "message", "summary": summary, "attachments": [{"contentType": CARD, "content": card}]}
    # items held for one member of a group chat or channel @mention them: so does their digest
    addressee = next((person for row in rows if (person := mentioned(row.payload)) is not None), None)
    return payload if addressee is None else with_mention(payload, addressee)


def _size(payload: dict[str, Any]) -> int:
    return len(json.dumps(payload).encode())


def digest_payloads(
    rows: list[OutboxRow], *, resume_prompt: str | None = None, reason: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[dict[str, Any]]:
    """The held items as one message, newest last (more only if one would be over `max_bytes`).

    `reason` picks the heading (see `reason_of`); `resume_prompt` re-asks a pending question at the end."""
    title = _title(len(rows), reason)
    whole = _payload(rows, title, resume_prompt)
    if _size(whole) <= max_bytes:
        return [whole]
    if len(rows) == 1:  # a message near the limit on its own: send it as it was
        return [rows[0].payload]
    groups: list[list[OutboxRow]] = [[]]
    for row in rows:
        candidate = [*groups[-1], row]
        if groups[-1] and _size(_payload(candidate, title, resume_prompt)) > max_bytes:
            groups.append([row])
        else:
            groups[-1] = candidate
    out = []
    for n, group in enumerate(groups, start=1):
        part = _payload(group, f"{title} (part {n} of {len(groups)})", resume_prompt if n == len(groups) else None)
        out.append(part if _size(part) <= max_bytes else group[0].payload)
    return out
