"""Price sources: the HTTP JSON source against a local fake API, the demo catalog's walk, the push parser."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.prices.sources import (
    DemoCatalog,
    HttpJsonSource,
    PriceBodyError,
    PriceQuote,
    build_price_source,
    parse_price_push,
)
from state.clock import FakeClock

HANG = "hang"
Make = Callable[..., HttpJsonSource]


class Feed:
    """A fake price API: scripted answers per product (the last one repeats); records what it was asked."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Any]] = {}
        self.paths: list[str] = []
        self.peers: list[Any] = []
        self.sleeps: list[float] = []
        self.release = asyncio.Event()
        self.url = ""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.raw_path)
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        queue = self.answers.get(unquote(request.raw_path.removeprefix("/prices/").split("?")[0]))
        if not queue:
            return web.json_response({"error": "no such product"}, status=404)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if answer == HANG:
            await self.release.wait()
        if isinstance(answer, int):
            return web.Response(status=answer, text="oops")
        if isinstance(answer, str):
            return web.Response(text=answer, content_type="application/json")
        return web.json_response(answer)


@pytest.fixture
async def feed() -> AsyncIterator[Feed]:
    feed = Feed()
    app = web.Application()
    app.router.add_get("/{tail:.*}", feed.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    feed.url = f"http://127.0.0.1:{server.port}/prices/{{product}}?fmt=json"
    yield feed
    feed.release.set()
    await server.close()


@pytest.fixture
async def source(feed: Feed, fake_clock: FakeClock) -> AsyncIterator[Make]:
    made: list[HttpJsonSource] = []

    def make(price_path: str = "price", **options: Any) -> HttpJsonSource:
        options = {"sleep": feed.sleep, "clock": fake_clock, **options}
        made.append(HttpJsonSource(options.pop("url", feed.url), price_path, **options))
        return made[-1]

    yield make
    for item in made:
        await item.close()


async def test_nested_path_with_currency_and_url(feed: Feed, source: Make, fake_clock: FakeClock) -> None:
    feed.answers["gadget"] = [{"data": {"items": [{"price": 19.99, "cur": "usd", "link": "https://shop.example/g"}]}}]
    feed_source = source("data.items.0.price", currency_path="data.items.0.cur", url_path="data.items.0.link",
                         source_name="acme-feed")
    assert await feed_source.fetch("gadget") == PriceQuote(
        "gadget", Decimal("19.99"), "USD", "acme-feed", "https://shop.example/g", fake_clock.now())
    feed.answers["gizmo"] = [{"data": {"items": []}}]
    assert await feed_source.fetch("gizmo") is None


async def test_string_price_and_a_bad_optional_field_still_quote(
        feed: Feed, source: Make, caplog: pytest.LogCaptureFixture) -> None:
    feed.answers["gizmo"] = [{"price": " 12.50 ", "link": "javascript:alert(1)"}]
    quote = await source(currency_path="currency", url_path="link").fetch("gizmo")
    assert quote is not None and (quote.price, quote.currency, quote.url) == (Decimal("12.50"), None, None)
    assert "gizmo" in caplog.text and "no field currency" in caplog.text and "http or https" in caplog.text


@pytest.mark.parametrize("status", [404, 400, 401, 403, 429])
async def test_unknown_product_and_client_errors_are_none_without_retry(feed: Feed, source: Make, status: int) -> None:
    feed.answers["gadget"] = [status]
    assert await source().fetch("gadget") is None
    assert len(feed.paths) == 1 and feed.sleeps == []


async def test_5xx_is_retried_with_backoff(feed: Feed, source: Make, caplog: pytest.LogCaptureFixture) -> None:
    feed.answers["gadget"] = [500, 502, {"price": 3}]
    quote = await source(backoff_s=0.25).fetch("gadget")
    assert quote is not None and quote.price == Decimal(3) and feed.sleeps == [0.25, 0.5] and len(feed.paths) == 3
    assert not caplog.records
    feed.answers["gizmo"] = [503]  # persistently: None, and one log line
    assert await source().fetch("gizmo") is None
    assert len(feed.paths) == 6 and feed.sleeps[2:] == [0.5, 1.0]
    assert [r.getMessage() for r in caplog.records] == ["price feed: no price for 'gizmo': HTTP 503 (3 attempts)"]


async def test_timeouts_and_refused_connections_give_none_after_retries(
        feed: Feed, source: Make, caplog: pytest.LogCaptureFixture) -> None:
    feed.answers["gadget"] = [HANG]
    assert await source(timeout_s=0.05).fetch("gadget") is None
    assert len(feed.paths) == 3 and "timed out after 0.05s (3 attempts)" in caplog.text
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert await source(url=f"http://127.0.0.1:{port}/p/{{product}}", retries=1).fetch("gadget") is None
    assert "ClientConnectorError" in caplog.text and feed.sleeps == [0.5, 1.0, 0.5]


@pytest.mark.parametrize(("answer", "reason"), [
    ("<html>busy</html>", "not JSON"), ({"cost": 5}, "no field price"), ({"price": [5]}, "a numeric string"),
    ({"price": -5}, "greater than 0"), ({"price": 0}, "greater than 0"), ({"price": "NaN"}, "finite"),
    ('{"price": NaN}', "finite"), ({"price": "1e10"}, "at most"), ({"price": True}, "a numeric string"),
    ({"price": None}, "a numeric string"),
])
async def test_unusable_answers_are_skipped(feed: Feed, source: Make, caplog: pytest.LogCaptureFixture, answer: Any,
                                            reason: str) -> None:
    feed.answers["gadget"] = [answer]
    assert await source().fetch("gadget") is None
    assert len(feed.paths) == 1 and reason in caplog.text and "'gadget'" in caplog.text


async def test_product_name_is_url_encoded(feed: Feed, source: Make) -> None:
    feed.answers["big gadget/v2"] = [{"price": 7}]
    quote = await source().fetch("big gadget/v2")
    assert quote is not None and quote.product == "big gadget/v2"
    assert feed.paths == ["/prices/big%20gadget%2Fv2?fmt=json"]


async def test_one_session_is_reused_and_an_injected_one_left_open(feed: Feed, source: Make) -> None:
    feed.answers["gadget"] = [{"price": 1}]
    own = source()
    await own.fetch("gadget")
    await own.fetch("gadget")
    assert feed.peers[0] == feed.peers[1]  # same keep-alive connection, so the same session
    async with aiohttp.ClientSession() as session:
        shared = source(session=session)
        assert await shared.fetch("gadget") is not None
        await shared.close()
        assert not session.closed


def walk(catalog: DemoCatalog, clock: FakeClock, product: str, steps: int) -> list[Decimal]:
    """The product's price at each of the next `steps` polls (read synchronously through products())."""
    prices = []
    for _ in range(steps):
        prices.append(next(q.price for q in catalog.products() if q.product == product))
        clock.advance(catalog.poll_interval_s)
    return prices


async def test_demo_is_reproducible_and_seeded() -> None:
    runs = [walk(DemoCatalog(clock := FakeClock(), seed=seed), clock, "gizmo", 50) for seed in (7, 7, 8)]
    assert runs[0] == runs[1] != runs[2]


async def test_demo_quote_same_within_a_step_and_moves_across_steps(fake_clock: FakeClock) -> None:
    catalog = DemoCatalog(fake_clock)
    first = await catalog.fetch(" GADGET ")
    fake_clock.advance(14.9)
    assert first is not None and first.price == getattr(await catalog.fetch("gadget"), "price", None)
    assert first == PriceQuote("gadget", Decimal("49.99"), "USD", "Demo store", "https://example.com/products/gadget",
                               FakeClock().now())
    fake_clock.advance(0.1)
    moved = await catalog.fetch("Gadget")
    assert moved is not None and moved.price != first.price
    assert await catalog.fetch("thingamajig") is None


async def test_demo_skipping_steps_lands_on_the_same_walk() -> None:
    stepwise = walk(DemoCatalog(clock := FakeClock()), clock, "widget", 1_100)  # across a DEMO_EPOCH restart
    jumper = DemoCatalog(clock := FakeClock())
    clock.advance(1_099 * 15)
    assert [q.price for q in jumper.products() if q.product == "widget"] == stepwise[-1:]


async def test_demo_walk_stays_in_bounds_and_always_moves() -> None:
    catalog = DemoCatalog(clock := FakeClock())
    bases = {q.product: q.price for q in catalog.products()}
    history: dict[str, list[Decimal]] = {name: [] for name in bases}
    for _ in range(10_000):
        for quote in catalog.products():
            history[quote.product].append(quote.price)
        clock.advance(15)
    for name, prices in history.items():
        assert all(bases[name] * Decimal("0.5") - Decimal("0.01") <= p <= bases[name] * Decimal("1.5") + Decimal("0.01")
                   for p in prices), name
        assert all(a != b for a, b in itertools.pairwise(prices)), name  # "any change" fires every poll
        big = sum(abs(b - a) / a >= Decimal("0.05") for a, b in itertools.pairwise(prices))
        assert big / len(prices) > 0.6, name  # "5%" watches fire most polls


async def test_demo_gadget_falls_below_a_threshold_within_a_minute() -> None:
    prices = walk(DemoCatalog(clock := FakeClock()), clock, "gadget", 2_000)
    assert min(prices[1:5]) < prices[0] * Decimal("0.95")  # a new user watching at start: alerted within 4 polls
    crossed = sum(min(prices[i + 1:i + 5]) < prices[i] * Decimal("0.95") for i in range(len(prices) - 5))
    assert crossed / (len(prices) - 5) > 0.8  # and so for most moments a user might start watching
    assert min(prices) < Decimal("49.99") * Decimal("0.6")  # it dips well below base


async def test_demo_products_lists_the_catalog(fake_clock: FakeClock) -> None:
    catalog = DemoCatalog(fake_clock)
    fake_clock.advance(100)
    listed = catalog.products()
    assert [q.product for q in listed] == ["gadget", "gizmo", "widget", "doohickey", "sprocket"]
    assert listed == [await catalog.fetch(q.product.upper()) for q in listed]
    assert all(q.url == f"https://example.com/products/{q.product}" and q.currency and q.source for q in listed)


GOOD = {"product": " Gadget ", "price": "19.99", "currency": "usd", "source": "acme", "url": "https://x.example/p"}


def without(name: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != name}


def test_push_good_body(fake_clock: FakeClock) -> None:
    assert parse_price_push(GOOD, fake_clock) == PriceQuote(
        "Gadget", Decimal("19.99"), "USD", "acme", "https://x.example/p", fake_clock.now())
    for body in (without("url") | {"price": 19.99}, GOOD | {"price": 19.99, "url": None}):
        quote = parse_price_push(body, fake_clock)
        assert (quote.price, quote.url) == (Decimal("19.99"), None)


@pytest.mark.parametrize(("body", "field"), [
    ([GOOD], "body"), ("price", "body"), (None, "body"), (GOOD | {"discount": 5}, "discount"),
    (without("product"), "product"), (GOOD | {"product": "  "}, "product"), (GOOD | {"product": 7}, "product"),
    (GOOD | {"product": "x" * 101}, "product"),
    (without("price"), "price"), (GOOD | {"price": "cheap"}, "price"), (GOOD | {"price": -1}, "price"),
    (GOOD | {"price": 0}, "price"), (GOOD | {"price": "NaN"}, "price"), (GOOD | {"price": "Infinity"}, "price"),
    (GOOD | {"price": 1e10}, "price"), (GOOD | {"price": True}, "price"), (GOOD | {"price": None}, "price"),
    (without("currency"), "currency"), (GOOD | {"currency": "US"}, "currency"),
    (GOOD | {"currency": "dollars"}, "currency"), (GOOD | {"currency": "U$D"}, "currency"),
    (GOOD | {"currency": 840}, "currency"),
    (without("source"), "source"), (GOOD | {"source": ""}, "source"), (GOOD | {"source": "s" * 101}, "source"),
    (GOOD | {"url": "ftp://x.example/p"}, "url"), (GOOD | {"url": "not a link"}, "url"), (GOOD | {"url": 5}, "url"),
    (GOOD | {"url": "https://x.example/" + "a" * 2000}, "url"), (GOOD | {"url": "http://[::1/p"}, "url"),
])
def test_push_bad_bodies_name_the_field(fake_clock: FakeClock, body: Any, field: str) -> None:
    with pytest.raises(PriceBodyError) as caught:
        parse_price_push(body, fake_clock)
    assert caught.value.field == field and str(caught.value).startswith(f"{field}: ")


HTTP = {"url_template": "https://api.example/p/{product}", "price_path": "data.price"}


async def test_build_each_kind(fake_clock: FakeClock) -> None:
    assert build_price_source("none", clock=fake_clock) is None
    demo = build_price_source(" Demo ", clock=fake_clock)
    assert isinstance(demo, DemoCatalog) and demo.poll_interval_s == 15.0
    http = build_price_source("http", clock=fake_clock, **HTTP, currency_path="data.cur", source_name="acme-feed")
    assert isinstance(http, HttpJsonSource) and http.name == "acme-feed"
    default = build_price_source("http", clock=fake_clock, **HTTP)
    assert default is not None and default.name == "price feed"
    for made in (demo, http, default):
        await made.close()


@pytest.mark.parametrize(("kind", "settings", "var"), [
    ("polling", {}, "PRICE_SOURCE"), ("http", {}, "PRICE_URL_TEMPLATE"),
    ("http", HTTP | {"url_template": "https://api.example/p"}, "PRICE_URL_TEMPLATE"),
    ("http", HTTP | {"url_template": "ftp://api.example/{product}"}, "PRICE_URL_TEMPLATE"),
    ("http", HTTP | {"price_path": ""}, "PRICE_FIELD"), ("http", HTTP | {"price_path": "data..price"}, "PRICE_FIELD"),
    ("http", HTTP | {"currency_path": "data."}, "PRICE_CURRENCY_FIELD"),
    ("http", HTTP | {"url_path": ".link"}, "PRICE_URL_FIELD"),
    ("http", HTTP | {"source_name": "n" * 101}, "PRICE_SOURCE_NAME"),
])
def test_build_bad_settings_name_the_variable(fake_clock: FakeClock, kind: str, settings: dict[str, str],
                                              var: str) -> None:
    with pytest.raises(ValueError, match=rf"^{var} "):
        build_price_source(kind, clock=fake_clock, **settings)
