"""Watch conditions and the one-shot `watch <product> <condition>` form: tables of good and bad input."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dialogs.conditions import (
    HINT,
    MAX_PRODUCT_CHARS,
    Condition,
    ConditionError,
    parse_condition,
    parse_watch_command,
    validate_product,
)

D = Decimal


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("below 10", Condition("below", D("10"))),
        ("Below 10", Condition("below", D("10"))),
        ("  UNDER   $9.99 ", Condition("below", D("9.99"))),
        ("under 9.99$", Condition("below", D("9.99"))),
        ("<5", Condition("below", D("5"))),
        ("when it drops below 1,299.99", Condition("below", D("1299.99"))),
        ("above 12.5", Condition("above", D("12.5"))),
        ("over 12", Condition("above", D("12"))),
        ("> 12", Condition("above", D("12"))),
        ("if it goes over €0.0001", Condition("above", D("0.0001"))),
        ("any change", Condition("any")),
        ("any", Condition("any")),
        ("ANY CHANGE.", Condition("any")),
        ("changes", Condition("any")),
        ("5%", Condition("percent", D("5"))),
        ("2.5 %", Condition("percent", D("2.5"))),
        ("10 percent", Condition("percent", D("10"))),
        ("moves by 5%", Condition("percent", D("5"))),
        ("1000%", Condition("percent", D("1000"))),
    ],
)
def test_parse_condition_accepts(text: str, expected: Condition) -> None:
    assert parse_condition(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "Tell me when to alert you"),
        ("   ", "Tell me when to alert you"),
        ("below", "`below` needs a price"),
        ("below abc", "`abc` isn't a price"),
        ("below 1e5", "`1e5` isn't a price"),
        ("below NaN", "`nan` isn't a price"),
        ("below 1.2.3", "isn't a price"),
        ("below -5", "can't be negative"),
        ("under $-5", "can't be negative"),
        ("below 0", "more than 0"),
        ("above 0.00", "more than 0"),
        ("below 1.23456", "too many decimals"),
        ("above 2000000000", "more than I can watch"),
        ("0%", "more than 0%"),
        ("1001%", "at most 1000%"),
        ("+5%", "without a sign"),
        ("-5%", "without a sign"),
        ("abc%", "isn't a percentage"),
        ("soon", "I don't understand `soon`"),
        ("below 10 please", "isn't a price"),
    ],
)
def test_parse_condition_rejects_with_a_specific_message_and_the_hint(text: str, fragment: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    message = str(caught.value)
    assert fragment in message
    assert HINT in message


@pytest.mark.parametrize(
    ("condition", "wording"),
    [
        (Condition("below", D("10")), "drops below 10.00"),
        (Condition("below", D("0.125")), "drops below 0.125"),
        (Condition("above", D("1299.5")), "rises above 1,299.50"),
        (Condition("percent", D("2.50")), "moves by 2.5% or more (up or down)"),
        (Condition("percent", D("5")), "moves by 5% or more (up or down)"),
        (Condition("any"), "changes"),
    ],
)
def test_describe(condition: Condition, wording: str) -> None:
    assert condition.describe() == wording


@pytest.mark.parametrize(
    "condition",
    [Condition("below", D("9.99")), Condition("above", D("12")), Condition("any"), Condition("percent", D("2.5"))],
)
def test_json_round_trip(condition: Condition) -> None:
    data = condition.to_json()
    assert all(isinstance(v, (str, type(None))) for v in data.values())
    assert Condition.from_json(data) == condition


@pytest.mark.parametrize(
    "data",
    [None, "below 10", {}, {"kind": "sideways", "value": "1"}, {"kind": "below", "value": 10},
     {"kind": "below", "value": "ten"}, {"kind": "below", "value": None}, {"kind": "any", "value": "1"},
     {"kind": "percent", "value": "-1"}, {"kind": "below", "value": "NaN"}],
)
def test_from_json_rejects_what_to_json_never_produces(data: object) -> None:
    with pytest.raises(ValueError):
        Condition.from_json(data)


@pytest.mark.parametrize(
    ("rest", "product", "condition"),
    [
        ("", None, None),
        ("gadget", "gadget", None),
        ("gadget below 10", "gadget", Condition("below", D("10"))),
        ("Gadget ANY change", "Gadget", Condition("any")),
        ("super gadget above 5", "super gadget", Condition("above", D("5"))),
        ('"super gadget" above 5', "super gadget", Condition("above", D("5"))),
        ("“below average widget” under 3", "below average widget", Condition("below", D("3"))),
        ('"super gadget"', "super gadget", None),
        ("over the moon lamp below 10", "over the moon lamp", Condition("below", D("10"))),
        ("100% juice below 3", "100% juice", Condition("below", D("3"))),
        ("gadget 5%", "gadget", Condition("percent", D("5"))),
        ("gadget 5 %", "gadget", Condition("percent", D("5"))),
        ("below 10", None, Condition("below", D("10"))),
        ("any change", None, Condition("any")),
        ("below average widget", "below average widget", None),
        ("100% juice", "100% juice", None),
    ],
)
def test_parse_watch_command(rest: str, product: str | None, condition: Condition | None) -> None:
    assert parse_watch_command(rest) == (product, condition)


@pytest.mark.parametrize(
    ("rest", "product", "fragment"),
    [
        ("gadget below abc", "gadget", "`abc` isn't a price"),
        ("gadget below -5", "gadget", "can't be negative"),
        ('"super gadget" 0%', "super gadget", "more than 0%"),
        ("game over", "game", 'watch "game over"'),
        ("x" * (MAX_PRODUCT_CHARS + 1) + " below 5", None, "characters long"),
    ],
)
def test_parse_watch_command_errors_keep_the_good_product(rest: str, product: str | None, fragment: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_watch_command(rest)
    assert caught.value.product == product
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("  super   gadget ", "super gadget"), ('"quoted name"', "quoted name"), ("x" * MAX_PRODUCT_CHARS, "x" * 100)],
)
def test_validate_product_cleans_up(text: str, expected: str) -> None:
    assert validate_product(text) == expected


@pytest.mark.parametrize(("text", "fragment"), [("", "product's name"), ("   ", "product's name"),
                                                ("y" * (MAX_PRODUCT_CHARS + 1), "101 characters")])
def test_validate_product_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ConditionError, match=fragment):
        validate_product(text)


@pytest.mark.parametrize(
    ("kind", "value"),
    [("below", None), ("above", D("-1")), ("percent", D("0")), ("any", D("1")), ("below", D("NaN")), ("up", D("1"))],
)
def test_condition_refuses_inconsistent_values(kind: str, value: Decimal | None) -> None:
    with pytest.raises(ValueError):
        Condition(kind, value)  # type: ignore[arg-type]
