"""A throwaway PostgreSQL server for the tests and benchmarks: initdb + pg_ctl in a temporary directory.

Uses the machine's server binaries (PG_BINDIR, or /usr/lib/postgresql/<newest>/bin, or pg_ctl on PATH).
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system user (created by
Debian's postgresql package). Tuned for tests: no fsync, loopback TCP only, trust authentication.

    server = PostgresServer.find()          # None (with `PostgresServer.missing` saying why) without binaries
    server.start(); url = server.create_database(); ...; server.stop()
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "bot"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_bindir() -> tuple[Path | None, str]:
    """The directory with initdb/pg_ctl/postgres, or None and the reason."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir, ""
    return None, "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install the `postgresql` package"


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="bot-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._as_postgres = os.geteuid() == 0
        self.template = ""
        self._replication = False
        self.durable = False  # synchronous_commit on: what was committed survives halt() (a crash)
        if self._as_postgres:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root needs a `postgres` system user to run the server") from None
            os.chown(self.base, account.pw_uid, account.pw_gid)

    @classmethod
    def find(cls) -> tuple[PostgresServer | None, str]:
        bindir, reason = find_bindir()
        if bindir is None:
            return None, reason
        try:
            return cls(bindir), ""
        except RuntimeError as exc:
            return None, str(exc)

    def _run(self, *args: str, server: bool = True) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres and server:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=self.base)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout}")

    def start(self, *, replication: bool = False) -> None:
        """initdb and start; `replication`: WAL for a streaming standby (see `standby()`)."""
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync",
                  "--locale=C.UTF-8")
        if replication:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write("host replication all 127.0.0.1/32 trust\n")
        self.resume(replication=replication)

    def _options(self, replication: bool) -> str:
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB")
        if replication:  # once a standby is named (`synchronous()`), a commit waits until the standby applied it
            return (options + " -c wal_level=replica -c max_wal_senders=4 -c hot_standby=on"
                    " -c synchronous_commit=remote_apply -c wal_sender_timeout=5s -c wal_receiver_timeout=5s")
        return options + f" -c synchronous_commit={'on' if self.durable else 'off'}"

    def synchronous(self) -> None:
        """Commits on this primary wait for its standby from now on (`synchronous_standby_names = '*'`)."""
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", "postgres", "-v",
                  "ON_ERROR_STOP=1", "-c", "ALTER SYSTEM SET synchronous_standby_names = '*'", "-c",
                  "SELECT pg_reload_conf()", server=False)

    def resume(self, *, replication: bool = False) -> None:
        """Start the server on its data directory and port (again, after `halt()`)."""
        self._replication = replication
        self._run("pg_ctl", "-D", str(self.data), "-o", self._options(replication), "-l",
                  str(self.base / "server.log"), "-w", "-t", "60", "start")

    def halt(self) -> None:
        """Stop the server at once (immediate shutdown: as a crash), keeping its data for `resume()`."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def standby(self) -> PostgresServer:
        """A streaming replica of this server (started with `replication=True`): `pg_basebackup -R` into a new
        directory, started on its own port. `promote()` it after the primary is gone."""
        replica = PostgresServer(self.bindir)
        replica._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-D", str(replica.data),
                     "-R", "-X", "stream", "-c", "fast")
        replica.resume(replication=True)
        return replica

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """A new database (empty, or a copy of `template`); returns its DATABASE_URL."""
        name = name or f"t{os.getpid()}_{next(self._names)}"
        copy = ["-T", template, "-S", "FILE_COPY"] if template else []
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, *copy, name, server=False)
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        path = self.base / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""
