"""Log lines: text (default) or one JSON object per line (LOG_FORMAT=json) carrying, where known, the
conversation, tenant, outbox row and scheduler job the line is about, and the replica that wrote it.

The ids travel in contextvars, set where a turn or a send starts; a task started from there inherits them.
Never log message texts or secrets at INFO: ids, counts and error codes only.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from scheduler.jobs import CURRENT_JOB_ID

CONVERSATION_ID: ContextVar[str | None] = ContextVar("conversation_id", default=None)
TENANT_ID: ContextVar[str | None] = ContextVar("tenant_id", default=None)
OUTBOX_ID: ContextVar[int | None] = ContextVar("outbox_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class log_context:
    """Name the conversation / tenant / outbox row the enclosed code works on (given ones only). A class, not a
    generator: a broadcast enters one per send."""

    __slots__ = ("_ids", "_tokens")

    def __init__(self, *, conversation_id: str | None = None, tenant_id: str | None = None,
                 outbox_id: int | None = None) -> None:
        self._ids: tuple[tuple[ContextVar[Any], Any], ...] = (
            (CONVERSATION_ID, conversation_id), (TENANT_ID, tenant_id), (OUTBOX_ID, outbox_id))
        self._tokens: list[tuple[ContextVar[Any], Token[Any]]] = []

    def __enter__(self) -> None:
        self._tokens = [(var, var.set(value)) for var, value in self._ids if value is not None]

    def __exit__(self, *exc: object) -> None:
        for var, token in reversed(self._tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, replica and the context ids that are set."""

    def __init__(self, replica_id: str) -> None:
        super().__init__()
        self._replica_id = replica_id

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "replica": self._replica_id,
        }
        for key, var in (("conversationId", CONVERSATION_ID), ("tenantId", TENANT_ID), ("outboxId", OUTBOX_ID),
                         ("jobId", CURRENT_JOB_ID)):
            value = var.get()
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str, replica_id: str) -> None:
    """Root logging for the process: `log_format` "text" or "json", to stderr; repeated warnings rate-limited
    (bot/log_repeats.py)."""
    from .log_repeats import RepeatFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(replica_id) if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RepeatFilter())  # the same warning again within a minute: counted, said once
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
