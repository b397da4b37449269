"""Money and durations as exact integers.

Budgets count cost in integer micro-units (``MICROS`` per currency unit) so
that the stores add and compare integers only; floats never touch money.

Every money value is bounded *before* any arithmetic (see
``guardpool.policy.bounds``): a string by its length, a Decimal by its digit
count and exponent, any amount by ``MAX_MONEY``. Unbounded, a hostile
``"1e999999"`` raised ``decimal.Overflow`` and a million-digit string took
seconds to convert (Decimal -> int is quadratic).
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal

from guardpool.policy.bounds import (
    MAX_MONEY,
    MAX_MONEY_CHARS,
    MAX_MONEY_DIGITS,
    MAX_WINDOW_MS,
    MIN_MONEY_EXPONENT,
)

MICROS = 1_000_000

# ASCII digits only ([0-9], not \d, which admits every script's digits);
# whole-string matches only.
_MONEY = re.compile(r"\s*\$?\s*(?P<num>[0-9]{1,10}(?:\.[0-9]{1,96})?)\s*")
_DURATION = re.compile(r"\s*(?P<num>[0-9]{1,12})\s*(?P<unit>ms|s|m|h|d)\s*")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_EXPECTED = '"$5.00" or "5.00" (at most 10 digits before the point and 96 after)'


def parse_money(value: object) -> Decimal:
    """``"$5.00"``, ``"5.00"``, ``5`` or a Decimal -> Decimal. Floats are refused.

    Raises ValueError with a message fit for a PolicyError, a 422 or the API.
    """
    if isinstance(value, (bool, float)):
        raise ValueError(
            f'money must be a string like "$5.00" or an integer, not {type(value).__name__} '
            f"{value!r} (floats lose cents)"
        )
    if isinstance(value, Decimal):
        amount = _bounded_decimal(value)
    elif isinstance(value, int):
        if value < 0:
            raise ValueError(f"bad money {value}: must be a finite amount >= 0")
        if value > MAX_MONEY:
            raise ValueError(f"bad money: more than the largest amount, ${MAX_MONEY:,}")
        amount = Decimal(value)
    elif isinstance(value, str):
        if len(value) > MAX_MONEY_CHARS:
            raise ValueError(
                f"bad money {value[:20]!r}...: longer than {MAX_MONEY_CHARS} characters"
            )
        m = _MONEY.fullmatch(value)
        if m is None:
            raise ValueError(f"bad money {value!r}: expected {_EXPECTED}")
        amount = Decimal(m.group("num"))
    else:
        raise ValueError(f"bad money {value!r}: expected {_EXPECTED}")
    if amount > MAX_MONEY:
        raise ValueError(f"bad money {_show(value)}: more than the largest amount, ${MAX_MONEY:,}")
    return amount


def _bounded_decimal(value: Decimal) -> Decimal:
    # adjusted() and the exponent are O(1); they are checked before the digit
    # count, so that a huge value is refused without touching its digits.
    if not value.is_finite() or (value.is_signed() and value != 0):
        raise ValueError(f"bad money {_show(value)}: must be a finite amount >= 0")
    if value.adjusted() > 9:
        raise ValueError(f"bad money {_show(value)}: more than the largest amount, ${MAX_MONEY:,}")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if exponent < MIN_MONEY_EXPONENT or len(value.as_tuple().digits) > MAX_MONEY_DIGITS:
        raise ValueError(
            f"bad money {_show(value)}: more than {-MIN_MONEY_EXPONENT} digits after the point"
        )
    return abs(value)  # -0 -> 0


def _show(value: object) -> str:
    text = str(value)
    return repr(text) if len(text) <= 30 else repr(text[:20] + "...")


def to_micros(amount: Decimal) -> int:
    """Decimal currency -> integer micro-units, rounding up (never under-charge).

    ``amount`` must come from ``parse_money`` (bounded): the result is then at
    most ``MAX_AMOUNT``.
    """
    return int((amount * MICROS).to_integral_value(rounding=ROUND_CEILING))


def from_micros(micros: int) -> Decimal:
    return Decimal(micros) / MICROS


def format_micros(micros: int) -> str:
    """``5_000_000`` -> ``"$5.00"``; sub-cent amounts keep their digits."""
    sign = "-" if micros < 0 else ""
    amount = from_micros(abs(micros))
    text = f"{amount:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{sign}${whole}.{frac.ljust(2, '0')}"


def format_amount(dimension: str, value: int) -> str:
    """A counter value for a human: money as money (``$0.03``), anything else as is.

    The one place that knows the ``cost`` dimension counts micro-units, so that
    no reason reads ``actual 30000 > estimate 20000`` for three cents.
    """
    return format_micros(value) if dimension == "cost" else str(value)


def parse_duration_ms(value: object) -> int:
    """``"60s"``, ``"5m"``, ``"1h"``, ``"24h"``, ``"250ms"`` -> milliseconds (> 0)."""
    if isinstance(value, str) and len(value) <= 32:
        m = _DURATION.fullmatch(value)
        if m is not None:
            ms = int(m.group("num")) * _UNIT_MS[m.group("unit")]
            if ms > MAX_WINDOW_MS:
                raise ValueError(
                    f"bad duration {value!r}: longer than {MAX_WINDOW_MS // 86_400_000} days"
                )
            if ms > 0:
                return ms
    raise ValueError(
        f"bad duration {value!r}: expected a positive number with a unit, "
        'like "250ms", "60s", "5m", "1h" or "24h"'
    )
