"""Log lines: text (default) or one JSON object per line (LOG_FORMAT=json) carrying, where known, the
conversation, tenant, outbox row and scheduler job the line is about, and the replica that wrote it.

The ids travel in contextvars, set where a turn or a send starts; a task started from there inherits them.
Never log message texts or secrets at INFO: ids, counts and error codes only.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from scheduler.jobs import CURRENT_JOB_ID

CONVERSATION_ID: ContextVar[str | None] = ContextVar("conversation_id", default=None)
TENANT_ID: ContextVar[str | None] = ContextVar("tenant_id", default=None)
OUTBOX_ID: ContextVar[int | None] = ContextVar("outbox_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def log_context(*, conversation_id: str | None = None, tenant_id: str | None = None,
                outbox_id: int | None = None) -> Iterator[None]:
    """Name the conversation / tenant / outbox row the enclosed code works on (given ones only)."""
    conversation = CONVERSATION_ID.set(conversation_id) if conversation_id is not None else None
    tenant = TENANT_ID.set(tenant_id) if tenant_id is not None else None
    outbox = OUTBOX_ID.set(outbox_id) if outbox_id is not None else None
    try:
        yield
    finally:
        if outbox is not None:
            OUTBOX_ID.reset(outbox)
        if tenant is not None:
            TENANT_ID.reset(tenant)
        if conversation is not None:
            CONVERSATION_ID.reset(conversation)


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
