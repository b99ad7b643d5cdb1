"""The channel's token signing keys for the SDK's JWT validation, fetched and refreshed off the turn path.

The SDK validates inbound JWTs itself (issuer, audience, expiry, endorsements, `serviceurl`), but looks
the signing key up through `JwtTokenExtractor.metadataCache[metadata_url].get(kid)`, whose stock entry
fetches the OpenID metadata and the JWKS with a blocking `requests.get` (no timeout) inside the turn.
`ChannelSigningKeys` takes that entry's place for the configured metadata URL: the keys live in memory,
loaded at start-up and refreshed by one background task over the shared aiohttp session (daily, soon
after a token names a key it does not know, and with backoff after a failure, keeping the old keys).
A turn never waits for the network: a token signed with an unknown key is refused at once.

Keys are parsed with PyJWT (the SDK's own JWT library). A key that lists no endorsements is not kept: the
SDK only checks endorsements that are present, and a key endorsing nothing is not endorsed for Teams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import jwt
from botframework.connector.auth import JwtTokenExtractor

from state.clock import Clock, backoff_s

from .connector import SharedSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SigningKey:
    """What the SDK reads from a metadata lookup: the key for `jwt.decode`, and its endorsements."""

    public_key: Any
    endorsements: list[str]


def parse_keys(document: Any) -> dict[str, SigningKey]:
    """The usable keys of a JWKS document by key id; raises ValueError when there are none."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS document has no 'keys' list")
    keys: dict[str, SigningKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        endorsements = entry.get("endorsements")
        if not isinstance(endorsements, list) or not endorsements:
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            log.debug("skipped signing key %s: not a usable public key", entry.get("kid"))
            continue
        keys[entry["kid"]] = SigningKey(key, [str(e) for e in endorsements])
    if not keys:
        raise ValueError("the JWKS document has no usable endorsed signing keys")
    return keys


class ChannelSigningKeys:
    """The SDK's metadata entry for one OpenID metadata URL, served from memory (see the module docstring)."""

    def __init__(
        self,
        metadata_url: str,
        session: SharedSession,
        clock: Clock,
        *,
        refresh_every_s: float = 24 * 3600.0,
        unknown_key_refresh_s: float = 300.0,
        retry_base_s: float = 5.0,
        retry_cap_s: float = 300.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = metadata_url
        self._session = session
        self._clock = clock
        self._refresh_every = refresh_every_s
        self._unknown_key_refresh = unknown_key_refresh_s
        self._retry_base = retry_base_s
        self._retry_cap = retry_cap_s
        self._timeout = timeout_s
        self._keys: dict[str, SigningKey] = {}
        self._wake = asyncio.Event()
        self._attempted = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_fetch = -math.inf
        self.loads = 0  # successful loads

    async def start(self, wait_s: float = 5.0) -> None:
        """Take the SDK's entry for the URL and start loading the keys; waits for the first attempt, at most
        `wait_s` (without keys inbound requests get 401 while the background task keeps trying)."""
        JwtTokenExtractor.metadataCache[self.url] = self
        self._task = asyncio.create_task(self._run(), name="channel-signing-keys")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._attempted.wait()), wait_s)
        if not self.loads:
            log.warning("the channel's signing keys are not loaded yet (%s); inbound requests get 401 until "
                        "they are", self.url)

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if JwtTokenExtractor.metadataCache.get(self.url) is self:
            del JwtTokenExtractor.metadataCache[self.url]

    @property
    def count(self) -> int:
        return len(self._keys)

    async def get(self, key_id: str | None) -> SigningKey:
        """The SDK's lookup: the key, or PermissionError (401) at once; an unknown key asks for a refresh."""
        key = self._keys.get(key_id or "")
        if key is None:
            if self._task is not None and self._clock.monotonic() - self._last_fetch >= self._unknown_key_refresh:
                self._wake.set()
            raise PermissionError(f"the token's signing key {key_id!r} is not among the channel's keys")
        return key

    async def wait_for_load(self, after: int) -> None:
        """Wait until more than `after` loads have succeeded (tests)."""
        while self.loads <= after:
            self._changed.clear()
            await self._changed.wait()

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            self._last_fetch = self._clock.monotonic()
            try:
                async with asyncio.timeout(self._timeout):
                    keys = await self._fetch()
            except Exception as exc:  # network, TLS, HTTP status, JSON shape, timeout: keep the old keys
                failures += 1
                delay = backoff_s(failures, self._retry_base, self._retry_cap)
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "cannot refresh the channel's signing keys from %s (%s: %s); %d key(s) kept, "
                        "next try in %g s", self.url, type(exc).__name__, exc, len(self._keys), delay)
            else:
                if failures:
                    log.info("the channel's signing keys are loaded again after %d failed attempt(s)", failures)
                failures, delay = 0, self._refresh_every
                self._keys = keys
                self.loads += 1
                self._changed.set()
                log.debug("loaded %d channel signing key(s) from %s", len(keys), self.url)
            self._attempted.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _fetch(self) -> dict[str, SigningKey]:
        session = self._session.get()
        async with session.get(self.url, **self._session.proxy_for(self.url)) as response:
            response.raise_for_status()
            metadata = await response.json(content_type=None)
        jwks_uri = metadata.get("jwks_uri") if isinstance(metadata, dict) else None
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise ValueError("the OpenID metadata has no https 'jwks_uri'")
        async with session.get(jwks_uri, **self._session.proxy_for(jwks_uri)) as response:
            response.raise_for_status()
            return parse_keys(await response.json(content_type=None))
