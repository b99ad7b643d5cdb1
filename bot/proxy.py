"""The organisation's forward proxy: `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` (and their lower-case forms).

Every outbound call asks `ProxySettings.for_url(url)` which proxy to use, if any: `HTTPS_PROXY` for https URLs,
`HTTP_PROXY` for http ones, none for a host `NO_PROXY` lists (the standard library's reading:
comma-separated host names or domain suffixes, optional `:port`, `*` for everything) nor for loopback and
link-local hosts (a proxy cannot reach them: App Service's managed identity endpoint, IMDS). A proxy is an `http://`
URL, with Basic credentials in it when the proxy wants them (`http://user:password@proxy:3128`). https goes
through a CONNECT tunnel (TLS end to end, verified against the bot's trust store), http as absolute-form requests.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # public, not in typeshed


@dataclass(frozen=True)
class Proxy:
    """One proxy: where it listens, and its Basic credentials (if any)."""

    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        """The proxy's URL without credentials (for logs and aiohttp's `proxy=`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        """The URL with its credentials in it (what azure-core's `proxies` takes)."""
        if self.username is None:
            return self.url
        credentials = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
        return self.url.replace("http://", f"http://{credentials}", 1)

    @property
    def authorization(self) -> str | None:
        """The `Proxy-Authorization` value, or None without credentials."""
        if self.username is None:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def headers(self) -> dict[str, str]:
        authorization = self.authorization
        return {"Proxy-Authorization": authorization} if authorization else {}


def parse_proxy(name: str, value: str) -> Proxy:
    """A proxy URL as the variables hold it; ValueError names the variable and what is wrong."""
    try:
        parts = urlsplit(value if "://" in value else f"http://{value}")
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{name} must be a proxy URL like http://proxy.internal:3128, got {_redacted(value)!r}") \
            from None
    if parts.scheme.lower() != "http" or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ValueError(f"{name} must be an http:// proxy URL like http://user:password@proxy.internal:3128 "
                         f"(TLS to the target runs through the proxy's CONNECT tunnel), got {_redacted(value)!r}")
    if parts.username is None:
        return Proxy(parts.hostname, port)
    return Proxy(parts.hostname, port, unquote(parts.username), unquote(parts.password or ""))


def _redacted(value: str) -> str:
    scheme, sep, rest = value.rpartition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else value


@dataclass(frozen=True)
class ProxySettings:
    """The proxies of one process (see the module docstring); no proxy at all when both are None."""

    https: Proxy | None = None
    http: Proxy | None = None
    no_proxy: str = ""

    @classmethod
    def from_values(cls, values: Mapping[str, str]) -> ProxySettings:
        """From the environment (or `.env`): lower-case names win over upper-case ones, as in curl and urllib."""

        def get(name: str) -> str:
            return (values.get(name.lower()) or values.get(name.upper()) or "").strip()

        https, http = get("HTTPS_PROXY"), get("HTTP_PROXY")
        return cls(parse_proxy("HTTPS_PROXY", https) if https else None,
                   parse_proxy("HTTP_PROXY", http) if http else None, get("NO_PROXY"))

    @property
    def enabled(self) -> bool:
        return self.https is not None or self.http is not None

    def for_url(self, url: str) -> Proxy | None:
        """The proxy to reach `url` through, or None (no proxy for its scheme, or its host is in NO_PROXY)."""
        if not self.enabled:
            return None
        parts = urlsplit(url)
        proxy = self.https if parts.scheme.lower() == "https" else self.http if parts.scheme.lower() == "http" \
            else None
        if proxy is None or not parts.hostname or _local(parts.hostname):
            return None
        if self.no_proxy and proxy_bypass_environment(_host_port(parts.hostname, parts.port),
                                                      {"no": self.no_proxy}):
            return None
        return proxy

    def aiohttp_kwargs(self, url: str) -> dict[str, Any]:
        """`proxy=` for one aiohttp request to `url` ({} when it goes direct)."""
        proxy = self.for_url(url)
        if proxy is None:
            return {}
        return {"proxy": proxy.url_with_credentials}  # aiohttp sends them as Proxy-Authorization, CONNECT or not

    def azure_proxies(self, url: str) -> dict[str, str]:
        """azure-core's `proxies=` for a credential whose endpoint is `url` ({} when it goes direct)."""
        proxy = self.for_url(url)
        if proxy is None:
            return {}
        return {urlsplit(url).scheme.lower(): proxy.url_with_credentials}


def _local(host: str) -> bool:
    """Loopback and link-local hosts (App Service's identity endpoint, IMDS) never go through a proxy."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_link_local


def _host_port(host: str, port: int | None) -> str:
    return f"{host}:{port}" if port else host
