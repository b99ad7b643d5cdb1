"""`make playground`'s launcher: when it opens a browser, and the bot it starts (the process test is
tests/e2e/test_make_playground.py)."""

from __future__ import annotations

import sys
import webbrowser

import pytest

import local_playground


@pytest.fixture
def linux_desktop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER", "TEAMSAPPTESTER_BROWSER"):
        monkeypatch.delenv(name, raising=False)


def test_no_browser_without_a_display(linux_desktop: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webbrowser, "get", lambda *a: pytest.fail("must not look for a browser"))
    assert local_playground.graphical_browser() is None


@pytest.mark.parametrize("variable", ["TEAMSAPPTESTER_BROWSER", "BROWSER"])
def test_no_browser_when_told_none(linux_desktop: None, monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv(variable, "none")
    assert local_playground.graphical_browser() is None


def test_a_console_browser_is_not_opened_over_the_terminal(linux_desktop: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(webbrowser, "get", lambda *a: webbrowser.GenericBrowser("lynx"))
    assert local_playground.graphical_browser() is None


def test_a_graphical_browser_is_opened(linux_desktop: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    browser = webbrowser.BackgroundBrowser("firefox")
    monkeypatch.setattr(webbrowser, "get", lambda *a: browser)
    assert local_playground.graphical_browser() == browser.open


def test_no_browser_found(linux_desktop: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", ":0")

    def missing(*args: object) -> webbrowser.BaseBrowser:
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "get", missing)
    assert local_playground.graphical_browser() is None


def test_the_bot_it_starts_is_local_and_unauthenticated_whatever_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("MicrosoftAppId", "11111111-2222-3333-4444-555555555555")
    monkeypatch.setenv("MicrosoftAppPassword", "secret")
    env = local_playground.bot_environment()
    assert (env["HOST"], env["MicrosoftAppId"], env["MicrosoftAppPassword"]) == ("127.0.0.1", "", "")
    monkeypatch.setenv("PORT", "4001")
    assert local_playground.bot_port(local_playground.bot_environment()) == 4001


def test_a_bad_port_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "http")
    with pytest.raises(local_playground.LaunchError, match="PORT"):
        local_playground.bot_port(local_playground.bot_environment())
