"""Money and durations as exact integers.

Budgets count cost in integer micro-units (``MICROS`` per currency unit) so
that the stores add and compare integers only; floats never touch money.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

MICROS = 1_000_000

_MONEY = re.compile(r"^\s*\$?\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*$")
_DURATION = re.compile(r"^\s*(?P<num>[0-9]+)\s*(?P<unit>ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_money(value: object) -> Decimal:
    """``"$5.00"``, ``"5.00"``, ``5`` or a Decimal -> Decimal. Floats are refused.

    Raises ValueError with a message fit for a PolicyError.
    """
    if isinstance(value, (bool, float)):
        raise ValueError(
            f'money must be a string like "$5.00" or an integer, not {type(value).__name__} '
            f"{value!r} (floats lose cents)"
        )
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        m = _MONEY.match(value)
        if m is None:
            raise ValueError(f'bad money {value!r}: expected "$5.00" or "5.00"')
        try:
            amount = Decimal(m.group("num"))
        except InvalidOperation as exc:  # pragma: no cover - the regex admits digits only
            raise ValueError(f"bad money {value!r}") from exc
    else:
        raise ValueError(f'bad money {value!r}: expected "$5.00" or "5.00"')
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"bad money {value!r}: must be a finite amount >= 0")
    return amount


def to_micros(amount: Decimal) -> int:
    """Decimal currency -> integer micro-units, rounding up (never under-charge)."""
    return int((amount * MICROS).to_integral_value(rounding=ROUND_CEILING))


def from_micros(micros: int) -> Decimal:
    return Decimal(micros) / MICROS


def format_micros(micros: int) -> str:
    """``5_000_000`` -> ``"$5.00"``; sub-cent amounts keep their digits."""
    amount = from_micros(micros)
    text = f"{amount:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def parse_duration_ms(value: object) -> int:
    """``"60s"``, ``"5m"``, ``"1h"``, ``"24h"``, ``"250ms"`` -> milliseconds (> 0)."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m is not None:
            ms = int(m.group("num")) * _UNIT_MS[m.group("unit")]
            if ms > 0:
                return ms
    raise ValueError(
        f"bad duration {value!r}: expected a positive number with a unit, "
        'like "250ms", "60s", "5m", "1h" or "24h"'
    )
