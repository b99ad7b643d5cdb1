"""GET /openapi.json: the OpenAPI 3.1 description of the bot's HTTP API (docs/openapi.yaml), as JSON."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    """The description as a dict; read once when the web app is built."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or not str(spec.get("openapi", "")).startswith("3.1"):
        raise ValueError(f"{path} is not an OpenAPI 3.1 document")
    return spec


def openapi_endpoint(spec: dict[str, Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(spec)

    return openapi
