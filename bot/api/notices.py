"""The notice routes under /api/notify/batches/{batchId}: the delivery report (and what an organisation does
with a notice after sending it). Guarded by NOTIFY_TOKEN like POST /api/notify."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from bot.metrics import Metrics
from bot.notices.lifecycle import NoticeLifecycle
from bot.notices.recall import Recalls
from bot.notices.report import CSV_TYPE, JSON_LINES_TYPE, csv_chunk, json_lines_chunk, wants_csv
from state.broadcasts import Broadcast, BroadcastStore
from state.notices import DeliveryReport

from .errors import error
from .notify import find_batch


class NoticeEndpoints:
    """`refuse` is the notify API's token gate; the report streams `page` recipients per query."""

    def __init__(self, refuse: Callable[[web.Request], web.Response | None], broadcasts: BroadcastStore,
                 report: DeliveryReport, metrics: Metrics, lifecycle: NoticeLifecycle, recalls: Recalls, *,
                 page: int = 1000) -> None:
        self._refuse = refuse
        self._broadcasts = broadcasts
        self._report = report
        self._metrics = metrics
        self._lifecycle = lifecycle
        self._recalls = recalls
        self.page = page

    async def _batch(self, request: web.Request) -> Broadcast | web.Response:
        return await find_batch(request, self._refuse, self._broadcasts)

    async def recipients(self, request: web.Request) -> web.StreamResponse:
        """GET …/recipients: one row per recipient, CSV (`Accept: text/csv`) or JSON lines, streamed in pages."""
        batch = await self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        as_csv = wants_csv(request.headers.get("Accept", ""))
        response = web.StreamResponse(headers={
            "Content-Type": f"{CSV_TYPE}; charset=utf-8; header=present" if as_csv
            else f"{JSON_LINES_TYPE}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="notice-{batch.public_id}.{"csv" if as_csv else "jsonl"}"',
            "Cache-Control": "no-store"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if as_csv:
            await response.write(csv_chunk((), header=True))
        after = 0
        while True:
            rows = await self._report.page(batch.id, after, self.page)
            if not rows:
                break
            await response.write(csv_chunk(rows) if as_csv else json_lines_chunk(rows))
            after = rows[-1].row_id
            if len(rows) < self.page:
                break
        await response.write_eof()
        self._metrics.notice("report")
        return response

    async def cancel(self, request: web.Request) -> web.Response:
        """DELETE /api/notify/batches/{batchId}: nothing of it that has not gone yet goes (409 once finished)."""
        batch = await self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.finished and batch.state != "cancelled":
            return error(409, "Conflict", f"batch {batch.public_id} has finished: nothing is left to cancel")
        cancelled = await self._lifecycle.cancel(batch)
        return web.json_response({"batchId": batch.public_id, "state": "cancelled", "cancelled": cancelled.rows,
                                  "alreadyCancelled": cancelled.already})

    async def recall(self, request: web.Request) -> web.Response:
        """POST …/recall: delete the messages that went (what has not gone yet is cancelled first)."""
        batch = await self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if not batch.finished:
            await self._lifecycle.cancel(batch)
        to_recall = await self._recalls.start(batch.id)
        return web.json_response({"batchId": batch.public_id, "state": "recalling", "toRecall": to_recall,
                                  "recalled": batch.recalled}, status=202)
