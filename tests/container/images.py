"""Build and run the bot's image with podman on machines like CI's, where images cannot be pulled.

What differs from a laptop lives here, not in the Containerfile users build:
- the base image is built locally: Debian bookworm by `debootstrap --variant=minbase` (python3, python3-venv,
  ca-certificates) from the Debian archive apt is configured with, `podman import`ed, and passed as BASE. The
  root filesystem is cached under /var/tmp for the day (one debootstrap a day, not one per run);
- podman runs with `--runtime runc`, the host's network and lowered limits (the sandbox cannot raise them);
- pip inside the build trusts this machine's CA bundle (mounted, with a pip.conf naming it).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/tmp/price-watch-container-base")
SUITE, PACKAGES = "bookworm", "python3,python3-venv,ca-certificates"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PODMAN = ("podman", "--runtime", "runc")
LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
IMAGE = "localhost/price-watch:test"


class ContainerUnavailable(RuntimeError):
    """podman, runc or debootstrap is missing, or the base could not be built."""


def missing_tools() -> list[str]:
    return [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None
            and not Path("/usr/sbin", tool).exists()]


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}… exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def apt_mirror() -> str:
    """The Debian archive apt uses here (deb822 or one-line sources), else deb.debian.org."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split()
                if path.suffix == ".sources" and line.startswith("URIs:") and "debian-security" not in line:
                    return words[1]
                if line.startswith("deb ") and "debian-security" not in line and "debian" in line:
                    return next(w for w in words[1:] if "://" in w)
    return "http://deb.debian.org/debian"


def base_image() -> str:
    """The Debian base as a local image, debootstrapped at most once a day (cached under /var/tmp)."""
    day = datetime.date.today().isoformat()
    tag = f"localhost/price-watch-base:{SUITE}-{day}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once build it once
        if podman("image", "exists", tag, check=False).returncode == 0:
            return tag
        tarball = CACHE / f"{SUITE}-{day}.tar"
        if not tarball.exists():
            for old in CACHE.glob(f"{SUITE}-*.tar"):
                old.unlink()
            with tempfile.TemporaryDirectory(dir=CACHE) as work:
                root = Path(work) / "rootfs"
                done = subprocess.run(
                    ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(root), apt_mirror()],
                    capture_output=True, text=True, timeout=1800, check=False)
                if done.returncode != 0:
                    raise ContainerUnavailable(f"debootstrap failed ({done.returncode}):\n{done.stdout[-3000:]}"
                                               f"\n{done.stderr[-3000:]}")
                for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                    for item in (root / junk).glob("*"):
                        if item.is_file():
                            item.unlink()
                partial = tarball.with_suffix(".partial")
                subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True, timeout=600)
                partial.rename(tarball)
        podman("import", str(tarball), tag, timeout=900)
        listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/price-watch-base").stdout
        for old_tag in set(listed.split()) - {tag}:  # yesterday's bases
            podman("rmi", old_tag, check=False)
        return tag


def build_image(base: str, tag: str = IMAGE) -> float:
    """`make image` as a person runs it, with this machine's quirks in BUILD_FLAGS; returns the seconds it took."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
        conf.write(f"[global]\ncert = {CA_BUNDLE}\n")
    flags = ["--network", "host", *LIMITS, "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-v", f"{conf.name}:/etc/pip.conf:ro"]
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["make", "--no-print-directory", "image", f"IMAGE={tag}", f"BASE={base}", "CONTAINER_ENGINE=podman",
             f"BUILD_FLAGS={' '.join(flags)}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, check=False,
            env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")})
    finally:
        os.unlink(conf.name)
    if done.returncode != 0:
        raise RuntimeError(f"make image exited {done.returncode}:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
    return time.monotonic() - started


def inspect(ref: str, kind: str = "image") -> dict[str, Any]:
    result = json.loads(podman(kind, "inspect", ref).stdout)
    return dict(result[0])


@dataclass
class Container:
    """One detached container of the image, on the host's network."""

    name: str
    port: int
    started_at: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return f"--- podman logs {self.name}\n{done.stdout[-8000:]}{done.stderr[-8000:]}"

    def state(self) -> dict[str, Any]:
        return dict(inspect(self.name, "container")["State"])

    def stop(self, grace_s: int) -> int:
        """SIGTERM (the image's STOPSIGNAL); SIGKILL after `grace_s`, as Kubernetes does. Returns the exit code."""
        podman("stop", "--time", str(grace_s), self.name, timeout=grace_s + 60)
        return int(self.state()["ExitCode"])

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def run(name: str, port: int, env: Mapping[str, str], *, image: str = IMAGE, mounts: Sequence[str] = (),
        extra: Sequence[str] = ()) -> Container:
    """`podman run -d` hardened as the Kubernetes manifests run it: read-only root but /tmp (and the mounts),
    no capabilities, no privilege escalation."""
    podman("rm", "--force", "--time", "0", name, check=False)
    args = ["run", "-d", "--name", name, "--network", "host", *LIMITS, "--read-only", "--read-only-tmpfs=false",
            "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--health-interval", "disable", "-e", f"PORT={port}"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    for mount in mounts:
        args += ["-v", mount]
    started = time.monotonic()
    podman(*args, *extra, image)
    return Container(name, port, started)


def run_once(env: Mapping[str, str], *, image: str = IMAGE, timeout: float = 120) -> tuple[int, str]:
    """`podman run --rm` to completion: (exit code, output)."""
    args = ["run", "--rm", "--network", "host", *LIMITS, "--health-interval", "disable"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    done = podman(*args, image, timeout=timeout, check=False)
    return done.returncode, done.stdout + done.stderr


@contextlib.contextmanager
def volume(name: str) -> Iterator[str]:
    podman("volume", "rm", "--force", name, check=False)
    podman("volume", "create", name)
    try:
        yield name
    finally:
        podman("volume", "rm", "--force", name, check=False)
