"""The Agents Playground's web UI in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

What a person sees: opening the chat installs the bot and shows the welcome card with its buttons; clicking
"Watch a price" starts the watch dialog; a price alert's "Stop watching" click updates that card in place; the
analysis card shows its chart; `settings` shows the user's time zone (the Playground reports the zone of its
process, Europe/Berlin here); no text shows HTML entities.

Without Chromium or Playwright the test skips with the reason printed; REQUIRE_BROWSER=1 (CI) turns that into
a failure. With SCREENSHOTS_DIR set (`make screenshots`), it saves welcome.png, alert.png, analysis.png and
settings.png there (docs/img); otherwise into the test's temporary directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playground import Playground

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"]
TOKEN = "e2e-browser-token"
TIMEZONE = "Europe/Berlin"
WAIT_MS = 20_000


@pytest.fixture
def bot_env() -> dict[str, str]:
    return {"NOTIFY_TOKEN": TOKEN, "PRICES_TOKEN": TOKEN, "PRICE_SOURCE": "none", "ALERT_COALESCE_SECONDS": "0.3",
            "ANALYZE_SECONDS": "3", "PROGRESS_DELAYS": "1"}


@pytest.fixture(autouse=True)
def playground_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Playground puts its own process's time zone in `localTimezone`: make it Berlin."""
    monkeypatch.setenv("TZ", TIMEZONE)


def _unavailable(reason: str) -> None:
    print(f"browser test skipped: {reason}", file=sys.stderr)
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}\n(REQUIRE_BROWSER=1, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def page(playground: Playground) -> AsyncIterator[Any]:
    """A Chromium page with the Playground's web UI open (opening it installs the bot in the personal chat)."""
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install -e '.[test]')")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id=TIMEZONE,
                                            locale="en-US")
        tab = await context.new_page()
        await tab.goto(playground.base_url)
        try:
            yield tab
        finally:
            await browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def push_price(bot: str, price: str) -> None:
    body = {"product": "gadget", "price": price, "currency": "USD", "source": "Contoso Prices",
            "url": "https://shop.example/gadget"}
    async with aiohttp.ClientSession() as session, session.post(
        f"{bot}/api/prices", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        assert response.status == 202, await response.text()


async def type_message(tab: Any, text: str) -> None:
    box = tab.locator("[role=textbox][contenteditable=true]")
    await box.click()
    await tab.keyboard.type(text)
    await tab.keyboard.press("Enter")


async def screenshot(tab: Any, card: Any, path: Path) -> None:
    """The card with a margin around it."""
    await card.scroll_into_view_if_needed()
    box = await card.bounding_box()
    assert box is not None
    margin = 12
    await tab.screenshot(path=str(path), clip={"x": max(0, box["x"] - margin), "y": max(0, box["y"] - margin),
                                               "width": box["width"] + 2 * margin,
                                               "height": box["height"] + 2 * margin})


async def test_welcome_watch_alert_analysis_and_settings_in_the_browser(
    page: Any, playground: Playground, bot_process: Any, shots: Path
) -> None:
    from playwright.async_api import expect

    tab = page
    cards = tab.locator(".ac-adaptiveCard")

    # install → the welcome card with its buttons
    welcome = cards.filter(has_text="Hi, I'm")
    await expect(welcome).to_be_visible(timeout=WAIT_MS)
    for button in ("Watch a price", "Help"):
        await expect(welcome.get_by_role("button", name=button)).to_be_visible()
    await screenshot(tab, welcome, shots / "welcome.png")

    # "Watch a price" starts the watch dialog
    await welcome.get_by_role("button", name="Watch a price").click()
    await expect(tab.get_by_text("Which product should I watch?").last).to_be_visible(timeout=WAIT_MS)
    await type_message(tab, "gadget")
    await expect(tab.get_by_text("When should I tell you about").last).to_be_visible(timeout=WAIT_MS)
    await type_message(tab, "below 10")
    await expect(tab.get_by_text("Done: I'll tell you when").last).to_be_visible(timeout=WAIT_MS)

    # an alert, and "Stop watching" updates that card in place
    await push_price(bot_process, "12")
    await push_price(bot_process, "9.5")
    alert = cards.filter(has_text="Price alert")
    await expect(alert).to_have_count(1, timeout=WAIT_MS)
    await expect(alert).to_contain_text("12.00 → 9.50 USD (\u221220.8%)")
    await expect(alert).to_contain_text("CET")  # "Seen at" in the user's time zone
    await screenshot(tab, alert, shots / "alert.png")
    before = await cards.count()
    await alert.get_by_role("button", name="Stop watching").click()
    await expect(alert).to_contain_text("Stopped watching gadget.", timeout=WAIT_MS)
    await expect(alert.get_by_role("button", name="Stop watching")).to_have_count(0)
    assert await cards.count() == before, "the press added a card instead of updating the alert"

    # an analysis: the acknowledgement updated in place, then the result with its chart
    for price in ("11", "10.4", "9.8", "10.9", "11.6"):
        await push_price(bot_process, price)
    await type_message(tab, "analyze gadget")
    result = cards.filter(has_text="Analysis of gadget is ready")
    await expect(result).to_be_visible(timeout=WAIT_MS)
    await expect(tab.get_by_text("Done: the result is in the next message").last).to_be_visible(timeout=WAIT_MS)
    chart = result.locator("svg path").first  # the Playground renders Chart.Line as an SVG line chart
    await expect(chart).to_be_visible(timeout=WAIT_MS)
    await expect(result).to_contain_text("9.50 / 12.00 USD")
    await screenshot(tab, result, shots / "analysis.png")
    acknowledgements = tab.get_by_text("analysing **gadget**").or_(tab.get_by_text("Working on it"))
    assert await acknowledgements.count() <= 1, "progress was posted as new messages"

    # settings, in the time zone the Playground reports
    await type_message(tab, "settings")
    settings = cards.filter(has_text="Your settings")
    await expect(settings).to_be_visible(timeout=WAIT_MS)
    await expect(settings).to_contain_text(f"{TIMEZONE} (")
    await screenshot(tab, settings, shots / "settings.png")

    # text renders as text
    await type_message(tab, "help")
    await expect(tab.get_by_text("watch PRODUCT below PRICE").last).to_be_visible(timeout=WAIT_MS)
    shown = await tab.locator("main, body").first.inner_text()
    assert "&lt;" not in shown and "&gt;" not in shown and "&amp;" not in shown
    for name in ("welcome", "alert", "analysis", "settings"):
        assert (shots / f"{name}.png").stat().st_size > 1000
