"""What an id or a service URL from outside may look like before the bot stores it or sends anywhere with it.

Ids reach request lines (URL-quoted) and headers (`x-ms-conversation-id`, as they are) of the bot's calls to the
Bot Connector, so every id accepted anywhere (`/api/notify`, inbound activities) is checked here first:

- printable: no control character (C0, DEL, C1) and no Unicode line or paragraph separator, not blank, at most
  `MAX_ID_CHARS`; anything else printable is fine (the Agents Playground uses ids like `personal-chat-id`,
  Teams `29:1…`, `a:1…`, `19:…@thread.tacv2`, AAD object ids);
- a channel thread's `;messageid=` suffix is ASCII digits only (what Teams appends, `…;messageid=1616…`).

A service URL is an absolute https URL of printable ASCII without user info; http only for a loopback host
while the bot runs unauthenticated (local mode: the Playground's `http://localhost:…`).
The HTTP client refuses CR, LF and NUL in what it writes whatever the caller (`bot/teams/http1.py`): this is
the first fence, that one the last.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from bot.config import is_loopback

MAX_ID_CHARS = 1024
MAX_URL_CHARS = 2048
THREAD_MARK = ";messageid="
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 controls, DEL, C1 controls, U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR."""
_DIGITS = re.compile(r"[0-9]{1,32}", re.ASCII)


def unsafe_character(text: str) -> str | None:
    """The first control or line-separator character in `text`, described (`U+000D`), or None."""
    found = UNSAFE.search(text)
    return f"U+{ord(found.group()):04X}" if found else None


def check_printable(value: str, max_chars: int = MAX_ID_CHARS) -> str:
    """`value` if it holds only printable characters, is not blank and at most `max_chars` long; else ValueError."""
    bad = unsafe_character(value)
    if bad is not None:
        raise ValueError(f"must hold only printable characters, found {bad}")
    if not value.strip():
        raise ValueError("must not be empty or blank")
    if len(value) > max_chars:
        raise ValueError(f"must be at most {max_chars} characters")
    return value


def check_id(value: str) -> str:
    """`value` if it is an acceptable id (see the module docstring); else ValueError saying what is wrong."""
    check_printable(value)
    if THREAD_MARK in value and not _DIGITS.fullmatch(value.partition(THREAD_MARK)[2]):
        raise ValueError(f"a thread id's {THREAD_MARK!r} suffix must be digits only, e.g. 19:…@thread.tacv2"
                         f"{THREAD_MARK}1616161616161")
    return value


def check_optional_id(value: str) -> str:
    """Like `check_id`, except that an empty string (some clients' way of saying "none") is fine."""
    return value if value == "" else check_id(value)


def check_service_url(value: str, *, local: bool) -> str:
    """`value` if it is a service URL the bot may send to (see the module docstring); else ValueError."""
    if len(value) > MAX_URL_CHARS or not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError(f"must be an absolute https URL of at most {MAX_URL_CHARS} printable ASCII characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError("must be an absolute https URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise ValueError("must be an absolute https URL without user info, e.g. https://smba.trafficmanager.net/amer/")
    if scheme == "http" and not (local and is_loopback(parts.hostname)):
        raise ValueError("must be an https URL (http only for a loopback host while the bot runs without "
                         "MicrosoftAppId)")
    return value
