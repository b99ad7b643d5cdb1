"""Scheduler benchmark: ours vs APScheduler 3.11 (AsyncIOScheduler + SQLAlchemyJobStore on SQLite), one run.

    python bench/scheduler.py [--n 100000] [--aps-n 5000] [--late-n 10000] [--aps-late-n 10000] [--rounds 3]
                              [--pg-n 20000] [--pg-late-n 2000] [--postgres-url postgresql://…]

(a) Scheduling throughput, one-shot jobs due in an hour, one call at a time: our `schedule_at` against
    APScheduler's `add_job` (the fair headline: add_job is all APScheduler has). Our `schedule_many`
    batch is measured as an extra. Rounds interleave the contenders; figures are medians.
(b) Restart with N pending: a fresh subprocess opens the database and starts the scheduler (ours loads
    every pending job into its heap; APScheduler reads its store lazily). Reload seconds and RSS.
(c) Lateness: N jobs due evenly within 10 s, real clock; lateness = handler start - due time.
(d) On PostgreSQL, ours vs pgqueuer on the same server in the same run (`--postgres-url`'s server, or a
    throwaway one from the machine's binaries): jobs/s for enqueue + claim + complete of `--pg-n` no-op
    jobs (both enqueue in one batch and run at most PG_CONCURRENCY handlers at once; timed from the start
    of the enqueue to the last completion), and lateness of `--pg-late-n` jobs due within 10 s.

APScheduler runs on a smaller N by default because it commits each add_job separately with SQLite's
default rollback journal; throughput is per second anyway. Its SQLite uses SQLAlchemy's defaults (what
python-telegram-bot users are told to add), ours the bot's database (WAL, synchronous=NORMAL).
The last line is JSON with the figures the issue names.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

# This file is bench/scheduler.py: keep bench/ off sys.path so `import scheduler` finds the package.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench._harness import Databases, percentile  # noqa: E402
from scheduler import Job, JobSpec, Scheduler, SystemClock  # noqa: E402
from state.db import connect  # noqa: E402
from state.sqlite import SqliteDatabase  # noqa: E402

if TYPE_CHECKING:  # imported lazily, so the reload child for ours carries none of APScheduler/SQLAlchemy
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

LATE_WINDOW_S = 10.0
PG_CONCURRENCY = 50
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
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    store = SQLAlchemyJobStore(url=f"sqlite:///{path}")
    return AsyncIOScheduler(jobstores={"default": store}, timezone=UTC, **options)


async def stop_aps(aps: AsyncIOScheduler) -> None:
    aps.shutdown(wait=False)
    for _ in range(3):  # shutdown is delivered through the loop
        await asyncio.sleep(0)


# -- (a) scheduling throughput ---------------------------------------------------------------------


async def ours_schedule(path: Path, n: int, *, batch: bool) -> float:
    db = SqliteDatabase(str(path))
    await db.open()
    scheduler = Scheduler(db, SystemClock())
    scheduler.register("noop", noop)
    await scheduler.start()
    due = datetime.now(UTC) + timedelta(hours=1)
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
    due = datetime.now(UTC) + timedelta(hours=1)
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
    db = SqliteDatabase(path)
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


def in_subprocess(kind: str, path: Path, *extra: object) -> dict[str, float]:
    """Run one measurement in a fresh interpreter, so it sees neither this process's heap nor its garbage."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(path), *map(str, extra)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- (c) lateness ----------------------------------------------------------------------------------


def summary(lateness: list[float]) -> dict[str, float]:
    if not lateness:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "ran": 0}
    return {
        "p50": percentile(lateness, 50),
        "p99": percentile(lateness, 99),
        "max": max(lateness),
        "ran": len(lateness),
    }


async def child_late_ours(path: str, n: int) -> dict[str, float]:
    return summary(await ours_lateness(Path(path), n))


async def child_late_aps(path: str, n: int, add_rate: float) -> dict[str, float]:
    return summary(await aps_lateness(Path(path), n, add_rate))


async def ours_lateness(path: Path, n: int) -> list[float]:
    db = SqliteDatabase(str(path))
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
    await scheduler.schedule_many(JobSpec("record", base + timedelta(seconds=LATE_WINDOW_S * i / n)) for i in range(n))
    with contextlib.suppress(TimeoutError):  # a shortfall shows in the "ran" column
        await asyncio.wait_for(done.wait(), timeout=LATE_WINDOW_S + 60)
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
    base = time.time() + n / add_rate * 1.3 + 1.0
    for i in range(n):
        due_ts = base + LATE_WINDOW_S * i / n
        run_date = datetime.fromtimestamp(due_ts, UTC)
        aps.add_job(aps_late, "date", run_date=run_date, args=[due_ts])
    aps.resume()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_aps_done.wait(), timeout=max(0.0, base - time.time()) + LATE_WINDOW_S + 60)
    await stop_aps(aps)
    return list(_aps_lateness)


# -- (d) PostgreSQL: ours vs pgqueuer ------------------------------------------------------------


async def ours_pg_throughput(url: str, n: int) -> float:
    db = connect(url)
    await db.open()
    finished = 0
    done = asyncio.Event()

    async def count(job: Job) -> None:
        nonlocal finished
        finished += 1
        if finished == n:
            done.set()

    scheduler = Scheduler(db, SystemClock(), max_concurrency=PG_CONCURRENCY)
    scheduler.register("count", count)
    await scheduler.start()
    started = time.perf_counter()
    now = datetime.now(UTC)
    await scheduler.schedule_many(JobSpec("count", now) for _ in range(n))
    await asyncio.wait_for(done.wait(), timeout=300)
    await scheduler.stop()  # waits for the last runs' completion writes
    elapsed = time.perf_counter() - started
    left = await db.fetchone("SELECT COUNT(*) AS n FROM scheduled_jobs")
    await db.close()
    if left is None or left["n"]:
        raise RuntimeError(f"ours left {left and left['n']} job(s) in the table")
    return n / elapsed


async def ours_pg_lateness(url: str, n: int) -> list[float]:
    db = connect(url)
    await db.open()
    clock = SystemClock()
    lateness: list[float] = []
    done = asyncio.Event()

    async def record(job: Job) -> None:
        lateness.append((clock.now() - job.due_at).total_seconds() * 1000)
        if len(lateness) >= n:
            done.set()

    scheduler = Scheduler(db, clock, max_concurrency=PG_CONCURRENCY)
    scheduler.register("record", record)
    await scheduler.start()
    base = clock.now() + timedelta(seconds=1)
    await scheduler.schedule_many(JobSpec("record", base + timedelta(seconds=LATE_WINDOW_S * i / n)) for i in range(n))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=LATE_WINDOW_S + 60)
    await scheduler.stop()
    await db.close()
    return lateness


async def pgqueuer_run(url: str, n: int, *, late: bool) -> tuple[float, list[float]]:
    """pgqueuer's QueueManager on its own connection: (jobs/s from the enqueue to the last run, lateness ms)."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    conn = await asyncpg.connect(url)
    driver = AsyncpgDriver(conn)
    queries = Queries(driver)
    with contextlib.suppress(Exception):  # a fresh database per run; nothing to uninstall
        await queries.install()
    qm = QueueManager(queries)
    finished = 0
    lateness: list[float] = []
    due: dict[int, float] = {}

    @qm.entrypoint("count")
    async def count(job: Any) -> None:
        nonlocal finished
        finished += 1
        if late:
            lateness.append((time.time() - due[int(job.id)]) * 1000)
        if finished == n:
            qm.shutdown.set()

    started = time.perf_counter()
    if late:
        base = time.time() + 1.0
        offsets = [1.0 + LATE_WINDOW_S * i / n for i in range(n)]
        ids = await queries.enqueue(["count"] * n, [None] * n, [0] * n,
                                    [timedelta(seconds=o) for o in offsets])
        for job_id, offset in zip(ids, offsets, strict=True):
            due[int(job_id)] = base + offset - 1.0
    else:
        await queries.enqueue(["count"] * n, [None] * n, [0] * n)
    await asyncio.wait_for(qm.run(batch_size=PG_CONCURRENCY // 2, max_concurrent_tasks=PG_CONCURRENCY,
                                  dequeue_timeout=timedelta(seconds=1)), timeout=300)
    elapsed = time.perf_counter() - started
    await conn.close()
    return n / elapsed, lateness


async def postgres_section(args: argparse.Namespace, databases: Databases) -> dict[str, Any] | None:
    rates: dict[str, list[float]] = {"ours": [], "pgqueuer": []}
    late: dict[str, list[dict[str, float]]] = {"ours": [], "pgqueuer": []}
    for r in range(args.rounds):
        url = databases.url("postgresql", f"ours_{r}")
        if url is None:
            print(f"(d) skipped: {databases.missing}", file=sys.stderr)
            return None
        rates["ours"].append(await ours_pg_throughput(url, args.pg_n))
        rates["pgqueuer"].append((await pgqueuer_run(str(databases.url("postgresql", f"pgq_{r}")), args.pg_n,
                                                     late=False))[0])
        late["ours"].append(summary(await ours_pg_lateness(str(databases.url("postgresql", f"late_{r}")),
                                                          args.pg_late_n)))
        late["pgqueuer"].append(summary((await pgqueuer_run(str(databases.url("postgresql", f"pgql_{r}")),
                                                            args.pg_late_n, late=True))[1]))
        print(f"  PostgreSQL round {r + 1}: ours {rates['ours'][-1]:,.0f} jobs/s, pgqueuer "
              f"{rates['pgqueuer'][-1]:,.0f} jobs/s", file=sys.stderr)
    return {"rates": rates, "late": late}


# -- the run ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
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
        ours_reload = [in_subprocess("reload-ours", work / "ours-0.sqlite3") for _ in range(args.rounds)]
        aps_reload = [in_subprocess("reload-aps", work / "aps-0.sqlite3") for _ in range(args.rounds)]
        ours_late = [in_subprocess("late-ours", work / f"late-{r}.sqlite3", args.late_n) for r in range(args.rounds)]
        aps_rate_est = statistics.median(aps_rates)
        aps_late = [in_subprocess("late-aps", work / "late-aps.sqlite3", args.aps_late_n, aps_rate_est)]
        databases = Databases(work, args.postgres_url)
        try:
            pg = await postgres_section(args, databases)
        finally:
            databases.close()

    from apscheduler import __version__ as aps_version

    med = statistics.median
    ours_rate, aps_rate = med(single), med(aps_rates)

    def reload(results: list[dict[str, float]], key: str) -> float:
        return med([result[key] for result in results])

    def row(label: str, *cells: object) -> None:
        print(f"{label:<50}" + "".join(f"{cell:>10}" for cell in cells))

    print(f"\nScheduler benchmark: ours vs APScheduler {aps_version} (AsyncIOScheduler + SQLAlchemyJobStore)")
    print(f"on SQLite; medians of {args.rounds} rounds where repeated; {os.cpu_count()} CPUs\n")
    row("(a) schedule one-shot jobs", "N", "jobs/s")
    row("    ours: schedule_at, one call at a time", f"{args.n:,}", f"{ours_rate:,.0f}")
    row("    ours: schedule_many, one batch (extra)", f"{args.n:,}", f"{med(batch):,.0f}")
    row("    APScheduler: add_job, one call at a time", f"{args.aps_n:,}", f"{aps_rate:,.0f}")
    drain = med(aps_drains)
    print(f"      (APScheduler's add_jobs also queued wake-ups that took {drain:.2f} s more, not counted)")
    row("    ratio, one at a time (ours / APScheduler)", "", f"{ours_rate / aps_rate:.1f}x")
    print()
    row("(b) restart with N pending, fresh process", "N", "reload s", "RSS MB", "idle MB")
    for name, results, n in (
        ("ours: open + load all into the heap", ours_reload, args.n),
        ("APScheduler: start (reads its store lazily)", aps_reload, args.aps_n),
    ):
        rss = (reload(results, "reload_s"), reload(results, "rss_mb"), reload(results, "baseline_mb"))
        row(f"    {name}", f"{n:,}", f"{rss[0]:.3f}", f"{rss[1]:.1f}", f"{rss[2]:.1f}")
    print()
    row("(c) lateness, N jobs due within 10 s, fresh process", "N", "p50 ms", "p99 ms", "max ms", "ran")
    for name, results, n in (
        (f"ours (misfire run_late), median of {len(ours_late)}", ours_late, args.late_n),
        ("APScheduler (misfire_grace_time=None), 1 run", aps_late, args.aps_late_n),
    ):
        figures = (reload(results, "p50"), reload(results, "p99"), reload(results, "max"))
        row(f"    {name}", f"{n:,}", *(f"{f:.2f}" for f in figures), f"{reload(results, 'ran'):,.0f}")
    figures: dict[str, float] = {}
    if pg is not None:
        from pgqueuer import __version__ as pgq_version

        ours_pg, pgq = med(pg["rates"]["ours"]), med(pg["rates"]["pgqueuer"])
        print()
        row(f"(d) PostgreSQL, ours vs pgqueuer {pgq_version}, same server", "N", "jobs/s")
        row("    ours: schedule_many + claim + complete", f"{args.pg_n:,}", f"{ours_pg:,.0f}")
        row("    pgqueuer: batch enqueue + dequeue + complete", f"{args.pg_n:,}", f"{pgq:,.0f}")
        row("    ratio (ours / pgqueuer)", "", f"{ours_pg / pgq:.2f}x")
        row(f"    lateness, N due within 10 s, median of {args.rounds}", "N", "p50 ms", "p99 ms", "max ms", "ran")
        for name in ("ours", "pgqueuer"):
            results = pg["late"][name]
            row(f"    {name}", f"{args.pg_late_n:,}", *(f"{reload(results, k):.2f}" for k in ("p50", "p99", "max")),
                f"{reload(results, 'ran'):,.0f}")
        figures = {
            "pg_ours_jobs_per_s": round(ours_pg, 1),
            "pg_pgqueuer_jobs_per_s": round(pgq, 1),
            "pg_ratio_vs_pgqueuer": round(ours_pg / pgq, 2),
            "pg_lateness_p99_ms": round(reload(pg["late"]["ours"], "p99"), 2),
            "pg_pgqueuer_lateness_p99_ms": round(reload(pg["late"]["pgqueuer"], "p99"), 2),
        }
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    return {
        "ours_schedule_per_s": round(ours_rate, 1),
        "apscheduler_schedule_per_s": round(aps_rate, 1),
        "schedule_ratio_vs_apscheduler": round(ours_rate / aps_rate, 2),
        "reload_100k_s": round(reload(ours_reload, "reload_s"), 3),
        "rss_mb_100k": round(reload(ours_reload, "rss_mb"), 1),
        "lateness_p50_ms": round(reload(ours_late, "p50"), 2),
        "lateness_p99_ms": round(reload(ours_late, "p99"), 2),
        "lateness_max_ms": round(reload(ours_late, "max"), 2),
        **figures,
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--n", type=int, default=100_000, help="jobs for ours in (a) and (b)")
    parser.add_argument("--aps-n", type=int, default=5_000, help="jobs for APScheduler in (a) and (b)")
    parser.add_argument("--late-n", type=int, default=10_000, help="jobs for ours in (c)")
    parser.add_argument("--aps-late-n", type=int, default=10_000, help="jobs for APScheduler in (c)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-n", type=int, default=20_000, help="jobs per engine in (d)")
    parser.add_argument("--pg-late-n", type=int, default=2_000, help="jobs due within 10 s in (d)")
    parser.add_argument("--postgres-url", "--database", dest="postgres_url",
                        help="a PostgreSQL server for (d) (default: a throwaway server)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, *extra = args.child
        children = {
            "reload-ours": lambda: child_reload_ours(path),
            "reload-aps": lambda: child_reload_aps(path),
            "late-ours": lambda: child_late_ours(path, int(extra[0])),
            "late-aps": lambda: child_late_aps(path, int(extra[0]), float(extra[1])),
        }
        print(json.dumps(asyncio.run(children[kind]())))
        return
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
