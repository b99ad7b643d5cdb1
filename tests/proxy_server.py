"""A real forward proxy for tests: Debian's squid, started per test session in a temporary directory.

Its `hosts_file` maps test-only names (`*.example.test`, which no resolver answers) to 127.0.0.1, so a double
reached as `https://login.example.test:PORT/` is reachable through the proxy only: a call that bypasses the proxy
fails to resolve the name. It requires Basic credentials (`USER` / `PASSWORD`, checked by squid's own
`basic_ncsa_auth` helper against an MD5-crypt password file) and logs every request it serves (`log()`).

Without squid the proxy tests skip with the reason printed, unless REQUIRE_PROXY=1 (CI), where they fail;
`.ci/run` installs the `squid` package like `postgresql` and `chromium`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NAMES = ("login.example.test", "smba.example.test", "prices.example.test", "graph.example.test")
USER, PASSWORD = "proxyuser", "s3cret@pw"  # the "@" must travel URL-encoded in the proxy URL
HELPER = Path("/usr/lib/squid/basic_ncsa_auth")


class SquidProxy:
    """`SquidProxy.find()` then `start()`; `url` (no credentials), `url_with_credentials`, `log()`, `stop()`."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.directory = Path(tempfile.mkdtemp(prefix="squid-test-"))
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def find(cls) -> tuple[SquidProxy | None, str]:
        binary = shutil.which("squid") or ("/usr/sbin/squid" if os.path.exists("/usr/sbin/squid") else None)
        if binary is None:
            return None, "squid is not installed (apt-get install squid)"
        if not HELPER.exists():
            return None, f"squid's {HELPER} is missing"
        if shutil.which("openssl") is None:
            return None, "openssl is needed to write squid's password file"
        return cls(binary), ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        return f"http://{USER}:{PASSWORD.replace('@', '%40')}@127.0.0.1:{self.port}"

    def start(self) -> None:
        d = self.directory
        os.chmod(d, 0o777)  # squid drops to its own user (`proxy`) when started as root
        digest = subprocess.run(["openssl", "passwd", "-1", PASSWORD], check=True, capture_output=True,
                                text=True).stdout.strip()
        (d / "passwd").write_text(f"{USER}:{digest}\n")
        (d / "hosts").write_text("127.0.0.1 " + " ".join(NAMES) + "\n")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        user = "proxy" if os.geteuid() == 0 and _has_user("proxy") else None
        (d / "squid.conf").write_text("\n".join([
            f"http_port 127.0.0.1:{self.port}",
            f"pid_filename {d}/squid.pid",
            f"access_log stdio:{d}/access.log",
            f"cache_log {d}/cache.log",
            "cache_store_log none",
            "cache deny all",
            "cache_mem 8 MB",
            f"coredump_dir {d}",
            f"hosts_file {d}/hosts",
            "dns_nameservers 127.0.0.1",  # nothing answers there: only hosts_file names resolve
            "shutdown_lifetime 0 seconds",
            "pinger_enable off",
            "forwarded_for delete",
            "via off",
            f"auth_param basic program {HELPER} {d}/passwd",
            "auth_param basic realm test-proxy",
            "auth_param basic children 2",
            "acl authenticated proxy_auth REQUIRED",
            "http_access allow authenticated",
            "http_access deny all",
            *([f"cache_effective_user {user}"] if user else []),
            "",
        ]))
        for name in ("passwd", "hosts", "squid.conf"):
            os.chmod(d / name, 0o644)
        self._process = subprocess.Popen([self.binary, "-N", "-f", str(d / "squid.conf")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30  # start-up readiness, not a timing assertion
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"squid exited: {self._errors()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"squid did not listen within 30 s: {self._errors()}")

    def log(self) -> str:
        """squid's access log so far: one line per request it handled (method, URL or CONNECT host:port, user)."""
        path = self.directory / "access.log"
        return path.read_text() if path.exists() else ""

    def _errors(self) -> str:
        path = self.directory / "cache.log"
        text = path.read_text() if path.exists() else ""
        if self._process is not None and self._process.stderr is not None and self._process.poll() is not None:
            text += self._process.stderr.read().decode(errors="replace")
        return text[-2000:]

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            if self._process.stderr is not None:
                self._process.stderr.close()
            self._process = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
