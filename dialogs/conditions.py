"""What a watch waits for, parsed from what people type: `below 10`, `over $12.50`, `any change`, `5%`.

Pure functions, no SDK: the dialogs and the one-shot `watch gadget below 10` form share this one
reading of a condition; the `Condition` it produces lives in `state.model`.
"""

from __future__ import annotations

import re
from decimal import Decimal

from state.model import Condition, ConditionKind

HINT = "try 'below 20', 'above 20', 'any change' or '5%'"
MAX_PRODUCT_CHARS = 100
MAX_PRICE = Decimal(1_000_000_000)
MAX_PRICE_DECIMALS = 4
MAX_PERCENT = Decimal(1000)

_THRESHOLDS: tuple[tuple[ConditionKind, tuple[str, ...]], ...] = (
    ("below", ("below", "under", "<")),
    ("above", ("above", "over", ">")),
)
_ANY = frozenset({"any", "any change", "any changes", "every change", "change", "changes", "anything"})
# "when it drops below 10", "if it goes over 12", "moves by 5%": leading filler people type.
_FILLER = re.compile(
    r"^(?:(?:when|if)\s+)?(?:it\s+)?"
    r"(?:(?:drops|drop|falls|fall|goes|go|gets|get|is|rises|rise|moves|move|changes|change)\s+)?(?:by\s+)?"
)
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
_PERCENT = re.compile(r"(?P<sign>[+-])?\s*(?P<number>[^%\s]+)\s*(?:%|percent|pct)")
_CURRENCY = "$€£"
_QUOTED = re.compile(r"""^["“”'](?P<product>.+?)["“”']\s*(?P<rest>.*)$""")
_CONDITION_START = re.compile(r"^(?:below|under|above|over|any|[<>].*|[+-]?\d[\d.,]*%)$", re.IGNORECASE)


class InputError(ValueError):
    """Input a person typed that cannot be used; the message says why and what to type instead."""


class ConditionError(InputError):
    """A watch condition (or the product of a one-shot watch) that cannot be used.

    `product` is set when a one-shot `watch <product> <condition>` had a good product and a bad
    condition, so a dialog can keep the product and ask again for the condition only.
    """

    def __init__(self, message: str, product: str | None = None) -> None:
        super().__init__(message)
        self.product = product


def parse_condition(text: str) -> Condition:
    """Read a condition: `below 10`, `under $9.99`, `above 12.5`, `over 12`, `any change`, `5%`.

    `X%` means "moves by at least X% either way"; signed forms (`+5%`, `-5%`) are refused with a hint.
    """
    norm = " ".join(text.strip().lower().split()).rstrip(".!")
    if not norm:
        raise ConditionError(f"Tell me when to alert you: {HINT}.")
    if norm in _ANY:
        return Condition("any")
    body = _FILLER.sub("", norm, count=1) or norm
    if body in _ANY:
        return Condition("any")
    for kind, words in _THRESHOLDS:
        for word in words:
            if body == word or body.startswith(word + " ") or (word in ("<", ">") and body.startswith(word)):
                return Condition(kind, _parse_price(body[len(word) :].strip(), word))
    percent = _PERCENT.fullmatch(body)
    if percent:
        return Condition("percent", _parse_percent(percent.group("number"), percent.group("sign")))
    raise ConditionError(f"I don't understand `{text.strip()}` as a condition: {HINT}.")


def _parse_price(token: str, keyword: str) -> Decimal:
    if not token:
        raise ConditionError(f"`{keyword}` needs a price, like '{keyword} 20'; {HINT}.")
    number = token.strip(_CURRENCY + " ")
    if number.startswith("-"):
        raise ConditionError(f"A price can't be negative (`{token}`); {HINT}.")
    if not _NUMBER.fullmatch(number):
        raise ConditionError(f"`{token}` isn't a price I can read (use digits, like '{keyword} 19.99'); {HINT}.")
    value = Decimal(number.replace(",", ""))
    if value <= 0:
        raise ConditionError(f"A price must be more than 0; {HINT}.")
    if value > MAX_PRICE:
        raise ConditionError(f"`{token}` is more than I can watch (at most {MAX_PRICE:,}); {HINT}.")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_PRICE_DECIMALS:
        raise ConditionError(f"`{token}` has too many decimals (at most {MAX_PRICE_DECIMALS}); {HINT}.")
    return value


def _parse_percent(number: str, sign: str | None) -> Decimal:
    if sign:
        raise ConditionError(
            f"`{sign}{number}%`: I alert on moves either way, so give the size without a sign, like "
            f"'{number}%'; {HINT}."
        )
    if not re.fullmatch(r"\d+(?:\.\d+)?", number):
        raise ConditionError(f"`{number}%` isn't a percentage I can read; {HINT}.")
    value = Decimal(number)
    if value <= 0:
        raise ConditionError(f"The change must be more than 0%; {HINT}.")
    if value > MAX_PERCENT:
        raise ConditionError(f"`{number}%` is more than I can watch (at most {MAX_PERCENT}%); {HINT}.")
    return value


def validate_product(text: str) -> str:
    """Clean up a product name (quotes, spaces); ConditionError when empty or too long."""
    name = " ".join(text.split())
    quoted = _QUOTED.fullmatch(name)
    if quoted and not quoted.group("rest"):
        name = quoted.group("product").strip()
    if not name:
        raise ConditionError("Tell me the product's name, like 'gadget' or 'super gadget 3000'.")
    if len(name) > MAX_PRODUCT_CHARS:
        raise ConditionError(f"That name is {len(name)} characters long; keep it under {MAX_PRODUCT_CHARS + 1}.")
    return name


def parse_watch_command(rest: str) -> tuple[str | None, Condition | None]:
    """Split what follows `watch` into (product, condition); either may be missing.

    `gadget below 10` → both; `"super gadget" above 5` → quoted product; `gadget` → product only;
    `below 10` → condition only. The condition is the tail starting at the LAST condition word, so
    `over the moon lamp below 10` watches "over the moon lamp". A tail that does not parse raises
    ConditionError carrying the product, unless no product would be left, in which case all of
    `rest` is the product (`watch below average widget`).
    """
    rest = " ".join(rest.split())
    if not rest:
        return None, None
    quoted = _QUOTED.fullmatch(rest)
    if quoted:
        product = validate_product(quoted.group("product"))
        tail = quoted.group("rest")
        return product, (_condition_for(product, tail) if tail else None)
    words = rest.split(" ")
    start = _last_condition_start(words)
    if start is None:
        return validate_product(rest), None
    product_text, tail = " ".join(words[:start]), " ".join(words[start:])
    if not product_text:
        try:
            return None, parse_condition(tail)
        except ConditionError:
            return validate_product(rest), None
    product = validate_product(product_text)
    return product, _condition_for(product, tail)


def _condition_for(product: str, tail: str) -> Condition:
    try:
        return parse_condition(tail)
    except ConditionError as exc:
        message = str(exc)
        if tail.lower() in ("below", "under", "above", "over"):  # `watch game over`: part of the name?
            message += f' (If `{tail}` is part of the name, put the name in quotes: `watch "{product} {tail}"`.)'
        raise ConditionError(message, product=product) from exc


def _last_condition_start(words: list[str]) -> int | None:
    for index in range(len(words) - 1, -1, -1):
        word = words[index]
        if _CONDITION_START.match(word):
            return index
        following = words[index + 1].lower() if index + 1 < len(words) else ""
        if following in ("%", "percent", "pct") and re.fullmatch(r"[+-]?\d[\d.,]*", word):
            return index
    return None
