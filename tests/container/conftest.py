"""The image, built once per session (`make image` on a locally debootstrapped Debian base).

These tests need podman, runc and debootstrap and take minutes: they run with REQUIRE_CONTAINER=1 (CI sets it,
and `.ci/run` installs what is missing) and fail there if they cannot; elsewhere they skip with a reason.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.container.images import IMAGE, ContainerUnavailable, base_image, build_image, inspect, missing_tools


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "container: builds and runs the container image (REQUIRE_CONTAINER=1)")


def _unavailable(reason: str) -> None:
    print(reason, file=sys.stderr)
    if os.environ.get("REQUIRE_CONTAINER") == "1":
        pytest.fail(f"{reason}\n(REQUIRE_CONTAINER=1, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def image() -> str:
    """The bot's image, tagged localhost/price-watch:test; prints its size and the build time."""
    if os.environ.get("REQUIRE_CONTAINER") != "1":
        pytest.skip("container tests run with REQUIRE_CONTAINER=1 (CI sets it; they need podman and minutes)")
    if missing := missing_tools():
        _unavailable(f"container tests need {', '.join(missing)} (Debian packages podman, runc, debootstrap)")
    try:
        base = base_image()
    except ContainerUnavailable as exc:
        _unavailable(str(exc))
    seconds = build_image(base)
    size_mb = int(inspect(IMAGE)["Size"]) / 1e6
    print(f"\nimage {IMAGE}: {size_mb:.0f} MB, built by `make image` in {seconds:.0f} s on {base}", file=sys.stderr)
    return IMAGE
