"""Money as exact integer micro-units, durations as milliseconds: never floats."""

from __future__ import annotations

from decimal import Decimal

import pytest

from guardpool.policy.money import (
    MICROS,
    format_micros,
    from_micros,
    parse_duration_ms,
    parse_money,
    to_micros,
)


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("$5.00", Decimal("5.00")),
        ("5.00", Decimal("5.00")),
        ("$0.0031", Decimal("0.0031")),
        (" $ 12 ", Decimal("12")),
        (7, Decimal(7)),
        (Decimal("1.25"), Decimal("1.25")),
    ],
)
def test_money_parses_exactly(text: object, amount: Decimal) -> None:
    assert parse_money(text) == amount


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (0.1, "floats lose cents"),
        (5.0, "floats lose cents"),
        (True, "not bool"),
        ("5$", "bad money"),
        ("-$1", "bad money"),
        ("$-1", "bad money"),
        ("1e3", "bad money"),
        ("five dollars", "bad money"),
        ("", "bad money"),
        (Decimal("NaN"), "finite amount"),
        (Decimal("-1"), "finite amount"),
        (-1, "finite amount"),
        (None, "bad money"),
    ],
)
def test_bad_money_is_refused_with_the_reason(bad: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_money(bad)


def test_micros_round_up_so_nothing_is_under_charged() -> None:
    assert to_micros(Decimal("5.00")) == 5 * MICROS
    assert to_micros(Decimal("0.0000011")) == 2
    assert to_micros(Decimal("0.000001")) == 1
    assert to_micros(Decimal(0)) == 0
    assert from_micros(3_100) == Decimal("0.0031")
    # a sum of many small exact amounts stays exact (0.1 * 10 as floats is not 1.0)
    assert sum(to_micros(parse_money("$0.10")) for _ in range(10)) == MICROS


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (5_000_000, "$5.00"),
        (3_100, "$0.0031"),
        (0, "$0.00"),
        (1, "$0.000001"),
        (1_500_000, "$1.50"),
    ],
)
def test_format_micros(micros: int, text: str) -> None:
    assert format_micros(micros) == text
    assert to_micros(parse_money(text)) == micros


@pytest.mark.parametrize(
    ("text", "ms"),
    [("250ms", 250), ("60s", 60_000), ("5m", 300_000), ("1h", 3_600_000), ("24h", 86_400_000)],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("bad", ["0s", "60", "1.5h", "-5m", "5 minutes", "run", "", 60, None])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration_ms(bad)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("1000000000.01", "largest amount"),
        (10**9 + 1, "largest amount"),
        (10**4000, "largest amount"),
        (Decimal("1e999999"), "largest amount"),
        (Decimal("9" * 100_000), "largest amount"),
        (Decimal("1e-97"), "96 digits after the point"),
        (Decimal("0." + "1" * 100), "96 digits after the point"),
        ("0." + "1" * 97, "bad money"),
        ("1" * 11, "bad money"),
        ("9" * 990_000, "longer than 128 characters"),
        ("$1\n$2", "bad money"),
        ("١٢", "bad money"),  # Arabic-Indic digits: \d would accept them
        (Decimal("Infinity"), "finite amount"),
        (Decimal("-0.01"), "finite amount"),
    ],
)
def test_money_is_bounded_before_any_arithmetic(bad: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_money(bad)


def test_the_largest_money_fits_the_amount_bound() -> None:
    from guardpool.policy.bounds import MAX_AMOUNT, MAX_MONEY

    assert to_micros(parse_money("$1000000000")) == MAX_AMOUNT
    assert to_micros(parse_money(Decimal("0.000000000000000001"))) == 1
    # a cost that came as a float is accepted, exactly or as its shortest repr
    exact = 1.365e-05  # a float on purpose: Decimal(float) is its exact binary value
    assert to_micros(parse_money(Decimal(exact))) == 14
    assert to_micros(parse_money(Decimal("0.0000136499999999999999"))) == 14
    assert parse_money(MAX_MONEY) == MAX_MONEY
    assert parse_money(Decimal("-0")) == 0


def test_format_amount_shows_money_as_money() -> None:
    from guardpool.policy.money import format_amount

    assert format_amount("cost", 30_000) == "$0.03"
    assert format_amount("tokens", 30_000) == "30000"


@pytest.mark.parametrize("bad", ["401d", "99999999999999ms", "1" * 40 + "s"])
def test_durations_are_bounded(bad: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration_ms(bad)
