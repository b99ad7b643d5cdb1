"""Where prices come from: polled `PriceSource`s (an HTTP JSON API, a built-in demo catalog) and pushes to
`POST /api/prices` (`parse_price_push`). Sources never raise for remote trouble: they log one line, answer None.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp

from bot.proxy import ProxySettings
from bot.validation import unsafe_character
from state.clock import Clock
from state.model import Observation

log = logging.getLogger(__name__)

MIN_PRICE, MAX_PRICE, MAX_BODY_BYTES = Decimal("0.000001"), Decimal("1e9"), 1_000_000
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)  # what Decimal reads, ASCII only
DEMO_EPOCH = 1_000  # demo walks restart from base every this many steps, so catching up after idle time is cheap


PriceQuote = Observation  # one observed price of one product, as the rest of the bot stores it


class PriceSource(Protocol):
    """Something the scheduler can poll for a product's current price."""

    name: str
    poll_interval_s: float

    async def fetch(self, product: str) -> PriceQuote | None:
        """The current price, or None (unknown product / no usable answer, logged); never raises for remote trouble."""

    async def close(self) -> None: ...


def _price(value: Any) -> Decimal:
    text = value.strip() if isinstance(value, str) else str(value)  # str() of true, null, lists... is not numeric
    if isinstance(value, bool) or len(text) > 40 or not _NUMBER.fullmatch(text):
        raise ValueError(f"must be a finite number or a numeric string such as 19.99, not {str(value)[:60]!r}")
    try:
        price = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"must be a finite number or a numeric string such as 19.99, not {value!r}") from None
    if not price.is_finite() or not MIN_PRICE <= price <= MAX_PRICE:
        raise ValueError(f"must be greater than 0 (at least 0.000001) and at most 1e9, not {value!r}")
    return price


def _currency(value: Any) -> str:
    if not isinstance(value, str) or not (code := value.strip()).isascii() or not code.isalpha() or len(code) != 3:
        raise ValueError('must be a 3-letter currency code such as "USD"')
    return code.upper()


def _printable(value: str) -> str:
    if (bad := unsafe_character(value)) is not None:
        raise ValueError(f"must hold only printable characters, found {bad}")
    return value


def _url(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 2000:
        raise ValueError("must be a URL of at most 2000 characters")
    _printable(value)
    parts = urlsplit(value.strip())  # raises ValueError for a malformed host
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http or https URL")
    return value.strip()


def _text(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(text := _printable(value).strip()) <= 100:
        raise ValueError("must be a non-empty string of at most 100 characters")
    return text


def _path(text: str) -> tuple[str, ...]:
    if not all(parts := tuple(text.strip().split("."))):
        raise ValueError(f"{text!r} is not a dotted field path such as data.items.0.price")
    return parts


def _dig(doc: Any, path: tuple[str, ...]) -> Any:
    for i, key in enumerate(path):
        try:
            doc = doc[int(key)] if isinstance(doc, list) and key.isdigit() else doc[key]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"no field {'.'.join(path[: i + 1])}") from None
    return doc


class HttpJsonSource:
    """Polls a JSON API: GET `url_template` with `{product}` filled in, the price read at a dotted field path.
    404 means "unknown product"; other 4xx and unusable bodies are not retried; 5xx, timeouts and connection
    errors are retried `retries` times, waiting `backoff_s` doubled each time (`sleep` is injectable for tests).
    """

    def __init__(self, url_template: str, price_path: str, *, clock: Clock, currency_path: str | None = None,
                 url_path: str | None = None, source_name: str = "price feed", timeout_s: float = 5.0,
                 retries: int = 2, poll_interval_s: float = 300.0, session: aiohttp.ClientSession | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, backoff_s: float = 0.5,
                 proxies: ProxySettings | None = None) -> None:
        self._proxies = proxies or ProxySettings()  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY
        if "{product}" not in url_template:
            raise ValueError("url_template must contain {product}")
        self.name, self.poll_interval_s, self._template, self._clock = source_name, poll_interval_s, url_template, clock
        self._price_path = _path(price_path)
        self._optional_paths = ((_path(currency_path) if currency_path else None, _currency),
                                (_path(url_path) if url_path else None, _url))
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retries, self._sleep, self._backoff_s = max(0, retries), sleep, backoff_s
        self._session, self._owns_session = session, session is None

    async def fetch(self, product: str) -> PriceQuote | None:
        url = self._template.replace("{product}", quote(product, safe=""))
        for attempt in range(self._retries + 1):
            if attempt:
                await self._sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                status, body = await self._get(url)
            except TimeoutError:
                reason = f"timed out after {self._timeout.total}s"
            except aiohttp.ClientError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if status < 500:
                    return self._answer(product, status, body)
                reason = f"HTTP {status}"
        return self._skip(product, f"{reason} ({self._retries + 1} attempts)")

    async def _get(self, url: str) -> tuple[int, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.get(url, timeout=self._timeout, headers={"Accept": "application/json"},
                                     **self._proxies.aiohttp_kwargs(url)) as resp:
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise aiohttp.ClientPayloadError(f"response larger than {MAX_BODY_BYTES} bytes")
            return resp.status, bytes(body)

    def _skip(self, product: str, reason: str, level: int = logging.WARNING) -> PriceQuote | None:
        log.log(level, "%s: no price for %r: %s", self.name, product, reason)
        return None

    def _answer(self, product: str, status: int, body: bytes) -> PriceQuote | None:
        if status == 404:
            return self._skip(product, "unknown product (HTTP 404)", logging.INFO)
        if not 200 <= status < 300:
            return self._skip(product, f"HTTP {status}")
        try:
            doc = json.loads(body, parse_float=Decimal)
        except (ValueError, RecursionError):
            return self._skip(product, "response is not JSON")
        try:
            price = _price(_dig(doc, self._price_path))
        except ValueError as exc:
            return self._skip(product, f"{'.'.join(self._price_path)}: {exc}")
        extras: list[str | None] = [None, None]
        for i, (path, check) in enumerate(self._optional_paths):
            try:
                extras[i] = check(_dig(doc, path)) if path else None
            except ValueError as exc:  # a quote without currency or link is still a quote
                log.warning("%s: %r quoted without %s: %s", self.name, product, ".".join(path or ()), exc)
        return PriceQuote(product, price, extras[0], self.name, extras[1], self._clock.now())

    async def close(self) -> None:
        """Close the HTTP session if this source created it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None


_CATALOG: dict[str, tuple[Decimal, str, str]] = {  # product: (base price, currency, seller)
    "gadget": (Decimal("49.99"), "USD", "Demo store"),
    "gizmo": (Decimal("129.00"), "USD", "Gizmo Galaxy"),
    "widget": (Decimal("19.95"), "EUR", "Demo store"),
    "doohickey": (Decimal("7.50"), "GBP", "Bits & Bobs Ltd"),
    "sprocket": (Decimal("249.00"), "USD", "Sprocket Supply Co"),
}
_CLEARANCE = "gadget"  # drifts down, then restocks


class DemoCatalog:
    """Made-up products whose prices move on their own, so a new user sees an alert within a minute.

    Every `poll_interval_s` (monotonic, from construction) each price takes one step of a pseudo-random walk
    seeded by (seed, product, step): 3-12%, never 0, reflected to stay within [50%, 150%] of base, pulled back
    towards base, restarting from base every DEMO_EPOCH steps. "gadget" is on clearance: 80% of its steps go
    down and below 60% of base it restocks to 115-145%, so a `below` watch a little under its price fires soon.
    """

    name = "demo"

    def __init__(self, clock: Clock, *, seed: int = 7, poll_interval_s: float = 15.0) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")
        self._clock, self._seed, self.poll_interval_s, self._origin = clock, seed, poll_interval_s, clock.monotonic()
        self._walks: dict[str, tuple[int, float]] = {}  # product -> (step, level relative to base)

    def _uniform(self, product: str, step: int, salt: str) -> float:
        digest = hashlib.blake2b(f"{self._seed}:{product}:{step}:{salt}".encode(), digest_size=8).digest()
        return int.from_bytes(digest) / 2**64

    def _move(self, product: str, level: float, step: int) -> float:
        if product == _CLEARANCE and level < 0.6:
            return 1.15 + 0.3 * self._uniform(product, step, "restock")
        size = 0.03 + 0.09 * self._uniform(product, step, "size")
        pull = max(-1.0, min(1.0, math.log(level) / math.log(1.5)))  # -1 at 50% of base, +1 at 150%
        p_down = 0.8 if product == _CLEARANCE else 0.5 + 0.35 * pull
        move = -size if self._uniform(product, step, "direction") < p_down else size
        if not 0.5 <= level * (1 + move) <= 1.5:
            move = -move  # reflect: from inside the bounds, a reversed step of at most 12% stays inside
        return level * (1 + move)

    def _quote(self, product: str) -> PriceQuote:
        step = max(0, int((self._clock.monotonic() - self._origin) // self.poll_interval_s))
        at, level = self._walks.get(product, (0, 1.0))
        if step // DEMO_EPOCH != at // DEMO_EPOCH:
            at, level = step - step % DEMO_EPOCH, 1.0
        for k in range(at + 1, step + 1):
            level = self._move(product, level, k)
        self._walks[product] = (step, level)
        base, currency, seller = _CATALOG[product]
        return PriceQuote(product, (base * Decimal(repr(level))).quantize(Decimal("0.01")), currency, seller,
                          f"https://example.com/products/{product}", self._clock.now())

    def products(self) -> list[PriceQuote]:
        """Every demo product with its current price (for help texts)."""
        return [self._quote(product) for product in _CATALOG]

    async def fetch(self, product: str) -> PriceQuote | None:
        if (key := " ".join(product.split()).casefold()) in _CATALOG:
            return self._quote(key)
        log.debug("demo: unknown product %r", product)  # what a user typed: not at INFO
        return None

    async def close(self) -> None:
        """Nothing to release."""


class PriceBodyError(ValueError):
    """A pushed price body is invalid; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


_PUSH_CHECKS: dict[str, Callable[[Any], Any]] = {
    "product": _text, "price": _price, "currency": _currency, "source": _text, "url": _url,
}


def parse_price_push(body: Any, clock: Clock) -> PriceQuote:
    """Validate a pushed `{"product", "price", "currency", "source", "url"?}`; raises PriceBodyError."""
    if not isinstance(body, dict):
        raise PriceBodyError("body", "must be a JSON object")
    if unknown := sorted(str(key) for key in body if key not in _PUSH_CHECKS):
        raise PriceBodyError(unknown[0], f"unknown field; allowed: {', '.join(_PUSH_CHECKS)}")
    values: dict[str, Any] = {}
    for name, check in _PUSH_CHECKS.items():
        try:
            values[name] = None if name == "url" and body.get(name) is None else check(body[name])
        except KeyError:
            raise PriceBodyError(name, "is required") from None
        except ValueError as exc:
            raise PriceBodyError(name, str(exc)) from None
    return PriceQuote(observed_at=clock.now(), **values)


def build_price_source(kind: str, *, clock: Clock, url_template: str = "", price_path: str = "",
                       currency_path: str = "", url_path: str = "", source_name: str = "",
                       proxies: ProxySettings | None = None) -> PriceSource | None:
    """The polling source selected by PRICE_SOURCE (demo | http | none); ValueError names the bad setting."""
    kind = kind.strip().lower()
    if kind in ("none", "demo"):
        return None if kind == "none" else DemoCatalog(clock)
    if kind != "http":
        raise ValueError(f"PRICE_SOURCE must be demo, http or none, not {kind!r}")
    template, name = url_template.strip(), source_name.strip() or "price feed"
    try:
        _url(template if "{product}" in template else "")
    except ValueError:
        raise ValueError("PRICE_URL_TEMPLATE must be an http(s) URL containing {product} when PRICE_SOURCE=http, "
                         f"not {template!r}") from None
    for var, path in (("PRICE_FIELD", price_path), ("PRICE_CURRENCY_FIELD", currency_path),
                      ("PRICE_URL_FIELD", url_path)):
        if (var == "PRICE_FIELD" or path.strip()) and not all(path.strip().split(".")):
            raise ValueError(f"{var} must be a dotted field path such as data.items.0.price, not {path!r}")
    if len(name) > 100:
        raise ValueError("PRICE_SOURCE_NAME must be at most 100 characters")
    return HttpJsonSource(template, price_path, clock=clock, currency_path=currency_path.strip() or None,
                          url_path=url_path.strip() or None, source_name=name, proxies=proxies)
