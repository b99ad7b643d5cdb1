"""The bot's Bearer token (bot/teams/tokens.py): azure-identity against the identity double over TLS.

Refresh before expiry happens in the background, a hanging or refusing identity service gives
`TokenUnavailable` quickly and is asked again only after a backoff on the injected clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from bot.metrics import Metrics
from bot.teams.connector import SharedSession
from bot.teams.tokens import ChannelTokens, TokenUnavailable, credential_factory, split_login_url
from bot.tls import trust_context
from state.clock import FakeClock
from tests.identity_double import IdentityDouble

APP_ID = "app-1"
SECRET = "s3cret"
SCOPE = "https://api.botframework.com"


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityDouble]:
    async with IdentityDouble(tmp_path, clients={APP_ID: SECRET}) as double:
        yield double


@pytest.fixture
async def session(identity: IdentityDouble) -> AsyncIterator[SharedSession]:
    shared = SharedSession(ssl_context=trust_context([identity.ca_file]))
    yield shared
    await shared.close()


def tokens_for(identity: IdentityDouble, session: SharedSession, clock: FakeClock, secret: str = SECRET,
               **options: Any) -> ChannelTokens:
    config = Config(app_id=APP_ID, app_password=secret, login_url=identity.login_url("botframework.com"))
    return ChannelTokens(credential_factory(config, session), SCOPE, clock, **options)


def test_the_login_url_names_authority_and_tenant() -> None:
    assert split_login_url("https://login.microsoftonline.us/MicrosoftServices.onmicrosoft.us") == (
        "https://login.microsoftonline.us", "MicrosoftServices.onmicrosoft.us")
    assert split_login_url("https://login.microsoftonline.com/tenant-1/") == (
        "https://login.microsoftonline.com", "tenant-1")


async def test_a_token_near_expiry_is_refreshed_in_the_background(
    identity: IdentityDouble, session: SharedSession, fake_clock: FakeClock,
) -> None:
    identity.token_lifetime_s = 600  # refreshed 300 s before it expires
    tokens = tokens_for(identity, session, fake_clock)
    try:
        first = await tokens.token()
        assert await tokens.token() == first and identity.counts["token"] == 1, "cached"
        identity.hold("token")
        fake_clock.advance(320)
        assert await asyncio.wait_for(tokens.token(), 5) == first, "the current token is used while refreshing"
        await identity.wait_for(lambda i: i.held_count == 1)
        assert await tokens.token() == first and identity.counts["token"] == 2, "one refresh in flight"
        identity.release()
        await tokens.settle()
        assert await tokens.token() == identity.issued[-1] != first
    finally:
        await tokens.close()


async def test_a_hanging_identity_service_times_out_and_is_retried_after_a_backoff(
    identity: IdentityDouble, session: SharedSession, fake_clock: FakeClock,
) -> None:
    identity.hold("token")
    tokens = tokens_for(identity, session, fake_clock, wait_s=0.05, timeout_s=0.2, retry_base_s=2.0)
    try:
        with pytest.raises(TokenUnavailable, match="not answered yet"):
            await tokens.token()
        await tokens.settle()  # the request times out
        with pytest.raises(TokenUnavailable, match="did not answer") as unavailable:
            await tokens.token()
        assert unavailable.value.retry_after == pytest.approx(2.0)
        assert identity.counts["token"] == 1, "no new request before the backoff is over"
        identity.release()
        fake_clock.advance(2.0)
        assert await tokens.token() == identity.issued[-1]
        assert identity.counts["token"] == 2
    finally:
        await tokens.close()


async def test_refused_credentials_are_logged_as_such_and_backed_off(
    identity: IdentityDouble, session: SharedSession, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = tokens_for(identity, session, fake_clock, secret="wrong-secret-4711", retry_base_s=2.0)
    try:
        for expected_retry_after in (2.0, 4.0, 8.0):
            with pytest.raises(TokenUnavailable, match="invalid_client") as unavailable:
                await tokens.token()
            assert unavailable.value.retry_after == pytest.approx(expected_retry_after)
            with pytest.raises(TokenUnavailable):
                await tokens.token()  # within the backoff: no request
            fake_clock.advance(expected_retry_after)
        assert identity.counts["token"] == 3
        assert "check MicrosoftAppId, MicrosoftAppPassword" in caplog.text
        assert "wrong-secret-4711" not in caplog.text, "the secret never reaches the log"
    finally:
        await tokens.close()


async def test_concurrent_sends_share_one_request(
    identity: IdentityDouble, session: SharedSession, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    tokens = tokens_for(identity, session, fake_clock)
    try:
        values = await asyncio.gather(*(tokens.token() for _ in range(20)))
        assert set(values) == {identity.issued[0]} and identity.counts["token"] == 1
    finally:
        await tokens.close()


async def test_token_acquisitions_are_counted_once_per_request_to_the_identity_service(
    identity: IdentityDouble, session: SharedSession, fake_clock: FakeClock,
) -> None:
    metrics = Metrics()
    good = tokens_for(identity, session, fake_clock, on_acquired=metrics.token_acquired)
    bad = tokens_for(identity, session, fake_clock, secret="wrong", on_acquired=metrics.token_acquired)
    try:
        assert await good.token() == await good.token()  # the second is the cached one: no request
        with pytest.raises(TokenUnavailable):
            await bad.token()
    finally:
        await good.close()
        await bad.close()
    text = metrics.exposition().decode()
    assert 'bot_token_acquisitions_total{result="ok"} 1.0' in text
    assert 'bot_token_acquisitions_total{result="failed"} 1.0' in text
