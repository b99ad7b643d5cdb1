"""Where the bot's Bearer token may go: https service URLs whose host is on `SERVICE_URL_HOSTS`.

A service URL comes from an activity or a stored conversation reference (a database filled in local mode, or
moved with `state.transfer`, may hold any). With authentication on, the bot's token is attached only to https
URLs whose host is on the allow-list; anything else is refused (logged and counted by the caller) and nothing
is sent there. Entries are host names; a leading `*.` matches any subdomain (not the name itself). The default
is the Bot Connector hosts of Microsoft's public and government clouds (shared/teams-facts.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

DEFAULT_SERVICE_URL_HOSTS = (
    "smba.trafficmanager.net",  # public cloud (regional paths /amer/, /emea/, /teams/ …)
    "smba.infra.gcc.teams.microsoft.com",  # GCC
    "smba.infra.gov.teams.microsoft.us",  # GCC High
    "smba.infra.dod.teams.microsoft.us",  # DoD
)
_LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class ServiceUrlRefused(Exception):
    """The bot will not send (its token) to this service URL; `reason` says why."""

    def __init__(self, service_url: str, reason: str) -> None:
        super().__init__(f"refused to send to {service_url[:200]!r}: {reason}")
        self.service_url, self.reason = service_url, reason


def parse_hosts(text: str) -> tuple[str, ...]:
    """`SERVICE_URL_HOSTS`: comma-separated host names, `*.` for subdomains; ValueError names a bad entry."""
    hosts = []
    for entry in (part.strip().lower().rstrip(".") for part in text.split(",")):
        if not entry:
            continue
        name = entry[2:] if entry.startswith("*.") else entry
        labels = name.split(".")
        if not all(label and set(label) <= _LABEL and len(label) <= 63 for label in labels) and not _is_ip(name):
            raise ValueError(f"{entry!r} is not a host name (e.g. smba.trafficmanager.net or *.example.com)")
        hosts.append(entry)
    if not hosts:
        raise ValueError("names no host")
    return tuple(dict.fromkeys(hosts))


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


class ServiceUrlHosts:
    """The allow-list (see the module docstring); answers are cached per URL (the hot path asks per send)."""

    def __init__(self, hosts: Iterable[str] = DEFAULT_SERVICE_URL_HOSTS) -> None:
        self.hosts = tuple(hosts)
        self._exact = frozenset(h.strip("[]") for h in self.hosts if not h.startswith("*."))
        self._suffixes = tuple(h[1:] for h in self.hosts if h.startswith("*."))  # ".example.com"
        self._answers: dict[str, str | None] = {}
        self._refused_hosts: set[str] = set()

    def refusal(self, service_url: str) -> str | None:
        """None when the token may go to `service_url`; else why not."""
        try:
            return self._answers[service_url]
        except KeyError:
            pass
        answer = self._judge(service_url)
        if len(self._answers) > 4096:
            self._answers.clear()
        self._answers[service_url] = answer
        return answer

    def first_refusal(self, service_url: str) -> bool:
        """True the first time a URL of this host is refused (log that one; count them all)."""
        try:
            host = urlsplit(service_url).hostname or service_url[:100]
        except ValueError:
            host = service_url[:100]
        if host in self._refused_hosts or len(self._refused_hosts) >= 1000:
            return False
        self._refused_hosts.add(host)
        return True

    def check(self, service_url: str) -> None:
        """ServiceUrlRefused unless the token may go to `service_url`."""
        reason = self.refusal(service_url)
        if reason is not None:
            raise ServiceUrlRefused(service_url, reason)

    def _judge(self, service_url: str) -> str | None:
        try:
            parts = urlsplit(service_url)
            host = (parts.hostname or "").rstrip(".")
        except ValueError:
            return "not a URL"
        if parts.scheme.lower() != "https":
            return "not an https URL"
        if host in self._exact or any(host.endswith(suffix) for suffix in self._suffixes):
            return None
        return f"the host {host!r} is not in SERVICE_URL_HOSTS"
