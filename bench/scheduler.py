"""Scheduler benchmark: ours vs APScheduler 3.11 (AsyncIOScheduler + SQLAlchemyJobStore on SQLite), one run.

    python bench/scheduler.py [--n 100000] [--aps-n 10000] [--late-n 10000] [--aps-late-n 10000] [--rounds 3]

(a) Scheduling throughput, one-shot jobs due in an hour, one call at a time: our `schedule_at` against
    APScheduler's `add_job` (the fair headline: add_job is all APScheduler has). Our `schedule_many`
    batch is measured as an extra. Rounds interleave the contenders; figures are medians.
(b) Restart with N pending: a fresh subprocess opens the database and starts the scheduler (ours loads
    every pending job into its heap; APScheduler reads its store lazily). Reload seconds and RSS.
(c) Lateness: N jobs due evenly within 10 s, real clock; lateness = handler start - due time.

APScheduler runs on a smaller N by default because it commits each add_job separately with SQLite's
default rollback journal; throughput is per second anyway. Its SQLite uses SQLAlchemy's defaults (what
python-telegram-bot users are told to add), ours the bot's database (WAL, synchronous=NORMAL).
The last line is JSON with the figures the issue names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

# This file is bench/scheduler.py: keep bench/ off sys.path so `import scheduler` finds the package.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from apscheduler import __version__ as aps_version  # noqa: E402
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore  # noqa: E402
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # noqa: E402

from bench._harness import percentile  # noqa: E402
from scheduler import Job, JobSpec, Scheduler, SystemClock  # noqa: E402
from state.db import Database  # noqa: E402

LATE_WINDOW_S = 10.0
_aps_lateness: list[float] = []
_aps_done: asyncio.Event | None = None
_aps_expected = 0


async def noop(job: Job) -> None:
    """Our handler for jobs that only need to exist."""


def aps_noop(i: int) -> None:
    """APScheduler's job function for jobs that only need to exist (referenced as __main__:aps_noop)."""


async def aps_late(due_ts: float) -> None:
    _aps_lateness.append((time.time() - due_ts) * 1000)
    if len(_aps_lateness) >= _aps_expected and _aps_done is not None:
        _aps_done.set()


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def new_aps(path: Path, **options: Any) -> AsyncIOScheduler:
    store = SQLAlchemyJobStore(url=f"sqlite:///{path}")
    return AsyncIOScheduler(jobstores={"default": store}, timezone=timezone.utc, **options)


async def stop_aps(aps: AsyncIOScheduler) -> None:
    aps.shutdown(wait=False)
    for _ in range(3):  # shutdown is delivered through the loop
        await asyncio.sleep(0)


# -- (a) scheduling throughput ---------------------------------------------------------------------


async def ours_schedule(path: Path, n: int, *, batch: bool) -> float:
    db = Database(str(path))
    await db.open()
    scheduler = Scheduler(db, SystemClock())
    scheduler.register("noop", noop)
    await scheduler.start()
    due = datetime.now(timezone.utc) + timedelta(hours=1)
    started = time.perf_counter()
    if batch:
        await scheduler.schedule_many(JobSpec("noop", due, {"i": i}) for i in range(n))
    else:
        for i in range(n):
            await scheduler.schedule_at(due, "noop", {"i": i})
    elapsed = time.perf_counter() - started
    await scheduler.stop()
    await db.close()
    return n / elapsed


async def aps_schedule(path: Path, n: int) -> tuple[float, float]:
    """add_job throughput, and the seconds the wake-ups it queued took afterwards (not counted)."""
    aps = new_aps(path)
    aps.start()
    due = datetime.now(timezone.utc) + timedelta(hours=1)
    started = time.perf_counter()
    for i in range(n):
        aps.add_job(aps_noop, "date", run_date=due, args=[i])
    elapsed = time.perf_counter() - started
    drain = time.perf_counter()
    await asyncio.sleep(0)  # each add_job queued a wake-up (call_soon_threadsafe) that queries the store
    drain_s = time.perf_counter() - drain
    await stop_aps(aps)
    return n / elapsed, drain_s


# -- (b) restart: run in a fresh subprocess -------------------------------------------------------


async def child_reload_ours(path: str) -> dict[str, float]:
    baseline = rss_mb()
    started = time.perf_counter()
    db = Database(path)
    await db.open()
    scheduler = Scheduler(db, SystemClock())
    scheduler.register("noop", noop)
    await scheduler.start()
    elapsed = time.perf_counter() - started
    result = {"reload_s": elapsed, "rss_mb": rss_mb(), "baseline_mb": baseline}
    await scheduler.stop()
    await db.close()
    return result


async def child_reload_aps(path: str) -> dict[str, float]:
    baseline = rss_mb()
    started = time.perf_counter()
    aps = new_aps(Path(path))
    aps.start()
    for _ in range(2):
        await asyncio.sleep(0)  # the first wake-up: due jobs and the next run time come from the store
    elapsed = time.perf_counter() - started
    result = {"reload_s": elapsed, "rss_mb": rss_mb(), "baseline_mb": baseline}
    await stop_aps(aps)
    return result


def reload_in_subprocess(kind: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- (c) lateness ----------------------------------------------------------------------------------


async def ours_lateness(path: Path, n: int) -> list[float]:
    db = Database(str(path))
    await db.open()
    clock = SystemClock()
    lateness: list[float] = []
    done = asyncio.Event()

    async def record(job: Job) -> None:
        lateness.append((clock.now() - job.due_at).total_seconds() * 1000)
        if len(lateness) >= n:
            done.set()

    scheduler = Scheduler(db, clock)
    scheduler.register("record", record)
    await scheduler.start()
    base = clock.now() + timedelta(seconds=1)
    await scheduler.schedule_many(
        JobSpec("record", base + timedelta(seconds=LATE_WINDOW_S * i / n)) for i in range(n)
    )
    try:
        await asyncio.wait_for(done.wait(), timeout=LATE_WINDOW_S + 60)
    except TimeoutError:
        pass
    await scheduler.stop()
    await db.close()
    return lateness


async def aps_lateness(path: Path, n: int, add_rate: float) -> list[float]:
    """Jobs are added while paused (no wake-ups), due after the adding is estimated to be done."""
    global _aps_done, _aps_expected
    _aps_lateness.clear()
    _aps_done, _aps_expected = asyncio.Event(), n
    aps = new_aps(path, job_defaults={"misfire_grace_time": None})  # run late jobs, like our run_late
    aps.start(paused=True)
    base = time.time() + n / add_rate * 1.5 + 1.0
    for i in range(n):
        due_ts = base + LATE_WINDOW_S * i / n
        run_date = datetime.fromtimestamp(due_ts, timezone.utc)
        aps.add_job(aps_late, "date", run_date=run_date, args=[due_ts])
    aps.resume()
    try:
        await asyncio.wait_for(_aps_done.wait(), timeout=max(0.0, base - time.time()) + LATE_WINDOW_S + 60)
    except TimeoutError:
        pass
    await stop_aps(aps)
    return list(_aps_lateness)


# -- the run ---------------------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


async def run(args: argparse.Namespace) -> dict[str, float]:
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as tmp:
        work = Path(tmp)
        single, batch, aps_rates, aps_drains = [], [], [], []
        for r in range(args.rounds):
            single.append(await ours_schedule(work / f"ours-{r}.sqlite3", args.n, batch=False))
            rate, drain = await aps_schedule(work / f"aps-{r}.sqlite3", args.aps_n)
            aps_rates.append(rate)
            aps_drains.append(drain)
            batch.append(await ours_schedule(work / f"batch-{r}.sqlite3", args.n, batch=True))
            print(f"  round {r + 1}: ours {single[-1]:,.0f}/s, APScheduler {rate:,.0f}/s", file=sys.stderr)
        ours_reload = [reload_in_subprocess("ours", work / "ours-0.sqlite3") for _ in range(args.rounds)]
        aps_reload = [reload_in_subprocess("aps", work / "aps-0.sqlite3") for _ in range(args.rounds)]
        ours_late = await ours_lateness(work / "late-ours.sqlite3", args.late_n)
        aps_late_ms = await aps_lateness(work / "late-aps.sqlite3", args.aps_late_n, statistics.median(aps_rates))

    med = statistics.median
    ours_rate, aps_rate = med(single), med(aps_rates)

    def reload_figure(results: list[dict[str, float]], key: str) -> float:
        return med([result[key] for result in results])

    def late(values: list[float], q: float) -> float:
        return percentile(values, q) if values else float("nan")

    print(f"\nScheduler benchmark: ours vs APScheduler {aps_version} (AsyncIOScheduler + SQLAlchemyJobStore, SQLite)")
    print(f"medians of {args.rounds} rounds where repeated; {os.cpu_count()} CPUs\n")
    print(f"{'(a) schedule one-shot jobs':<52}{'N':>9}{'jobs/s':>12}")
    print(f"{'    ours: schedule_at, one call at a time':<52}{args.n:>9,}{fmt(ours_rate, 0):>12}")
    print(f"{'    ours: schedule_many, one batch (extra)':<52}{args.n:>9,}{fmt(med(batch), 0):>12}")
    print(f"{'    APScheduler: add_job, one call at a time':<52}{args.aps_n:>9,}{fmt(aps_rate, 0):>12}")
    print(f"      (its add_jobs also queued {args.aps_n:,} wake-ups that took a further {med(aps_drains):.2f} s)")
    print(f"{'    ratio, one at a time (ours / APScheduler)':<52}{'':>9}{ours_rate / aps_rate:>11.1f}x\n")
    print(f"{'(b) restart with N pending, fresh process':<52}{'N':>9}{'reload s':>12}{'RSS MB':>9}{'(idle)':>8}")
    for name, results, n in (("ours: open + load all into heap", ours_reload, args.n),
                             ("APScheduler: start (reads store lazily)", aps_reload, args.aps_n)):  # fmt: skip
        print(
            f"{'    ' + name:<52}{n:>9,}{reload_figure(results, 'reload_s'):>12.3f}"
            f"{reload_figure(results, 'rss_mb'):>9.1f}{reload_figure(results, 'baseline_mb'):>8.1f}"
        )
    print(f"\n{'(c) lateness, N jobs due within 10 s':<52}{'N':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>10}{'ran':>8}")
    for name, values, n in (("ours (run_late)", ours_late, args.late_n),
                            ("APScheduler (misfire_grace_time=None)", aps_late_ms, args.aps_late_n)):  # fmt: skip
        print(
            f"{'    ' + name:<52}{n:>9,}{late(values, 50):>9.2f}{late(values, 99):>9.2f}"
            f"{max(values, default=float('nan')):>10.2f}{len(values):>8,}"
        )
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    return {
        "ours_schedule_per_s": round(ours_rate, 1),
        "apscheduler_schedule_per_s": round(aps_rate, 1),
        "schedule_ratio_vs_apscheduler": round(ours_rate / aps_rate, 2),
        "reload_100k_s": round(reload_figure(ours_reload, "reload_s"), 3),
        "rss_mb_100k": round(reload_figure(ours_reload, "rss_mb"), 1),
        "lateness_p50_ms": round(late(ours_late, 50), 2),
        "lateness_p99_ms": round(late(ours_late, 99), 2),
        "lateness_max_ms": round(max(ours_late, default=float("nan")), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="jobs for ours in (a) and (b)")
    parser.add_argument("--aps-n", type=int, default=10_000, help="jobs for APScheduler in (a) and (b)")
    parser.add_argument("--late-n", type=int, default=10_000, help="jobs for ours in (c)")
    parser.add_argument("--aps-late-n", type=int, default=10_000, help="jobs for APScheduler in (c)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path = args.child
        child = child_reload_ours if kind == "ours" else child_reload_aps
        print(json.dumps(asyncio.run(child(path))))
        return
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
