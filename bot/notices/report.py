"""The delivery report of a notice: one row per recipient, as CSV or as JSON lines.

CSV follows RFC 4180 through Python's `csv` module (fields with commas, quotes or line breaks quoted, quotes
doubled, CRLF line ends). A text cell that a spreadsheet would read as a formula (starting with `=`, `+`, `-`,
`@`, a tab or a carriage return) gets a leading `'`, as OWASP advises against CSV injection: names come from
Teams and people choose them. JSON lines carry the values as they are (JSON needs no such escape).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from state.notices import RecipientRow

COLUMNS = ("aadObjectId", "teamsId", "name", "conversationId", "status", "reason", "attempts", "sentAt",
           "acknowledgedAt")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_TYPE = "text/csv"
JSON_LINES_TYPE = "application/x-ndjson"


def record(row: RecipientRow) -> dict[str, Any]:
    """One recipient as the report's columns."""
    return {
        "aadObjectId": row.aad_object_id, "teamsId": row.teams_id, "name": row.name,
        "conversationId": row.conversation_id, "status": row.status, "reason": row.reason,
        "attempts": row.attempts, "sentAt": _iso(row.sent_at), "acknowledgedAt": _iso(row.acknowledged_at),
    }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def csv_cell(value: Any) -> str:
    """A value as a CSV cell that no spreadsheet evaluates."""
    if value is None:
        return ""
    text = str(value)
    return f"'{text}" if isinstance(value, str) and text.startswith(FORMULA_STARTS) else text


def csv_chunk(rows: Iterable[RecipientRow], *, header: bool = False) -> bytes:
    """CSV lines (CRLF) for `rows`, the header line first when asked."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        values = record(row)
        writer.writerow([csv_cell(values[c]) for c in COLUMNS])
    return out.getvalue().encode()


def json_lines_chunk(rows: Iterable[RecipientRow]) -> bytes:
    """One JSON object per line for `rows`."""
    return "".join(json.dumps(record(row), ensure_ascii=False) + "\n" for row in rows).encode()


def wants_csv(accept: str) -> bool:
    """Whether an Accept header asks for CSV (else JSON lines)."""
    return any(part.split(";")[0].strip().lower() == CSV_TYPE for part in accept.split(","))
