"""Compilation: a decoded Config checked across fields and turned into runtime parts.

    Config ─► check_guards (names, kinds, label patterns, privileged never fail open)
           ─► compile_limit / compile_price / compile_estimate (money in micro-units,
              durations in ms, custom dimensions checked)
           ─► check_pool (positive sizes, module names, a redis url)

Guards themselves compile in ``guards.compile_guards`` (RE2 banks, callables
imported); ``runtime.Policy`` puts the parts together. Every error is a
PolicyError with the key path; the loader adds the file.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Literal

import msgspec

from guardpool.extras import missing_extra
from guardpool.policy.config import Config, EstimateSpec, LimitSpec, PriceSpec
from guardpool.policy.errors import PolicyError
from guardpool.policy.labels import validate_pattern
from guardpool.policy.machine import check_paths
from guardpool.policy.model import Usage
from guardpool.policy.money import MICROS, parse_duration_ms, parse_money, to_micros
from guardpool.policy.poolsettings import check_memory_floor
from guardpool.policy.poolsettings import check_pool as check_pool_settings
from guardpool.policy.source import pattern_key, toml_key

_CORE_DIMENSIONS = ("calls", "tokens", "cost", "wall_ms")
_MTOK = 1_000_000


class CompiledLimit(msgspec.Struct, frozen=True, kw_only=True):
    """One ``[limits]`` entry in store units (cost in micro-units)."""

    pattern: str
    dimensions: dict[str, int]
    window_ms: int
    window: str
    scope: Literal["run", "principal", "global"]
    enforcement: Literal["fail-fast", "post-hoc"]
    on_exceed: Literal["deny", "warn", "ask"]
    warn_at: float | None
    on_warn_at: Literal["warn", "ask"] = "warn"
    margin: float


class CompiledPrice(msgspec.Struct, frozen=True, kw_only=True):
    """Micro-units per million tokens (input and output) and per call."""

    pattern: str
    input_per_mtok: int | None
    output_per_mtok: int | None
    per_call: int

    def cost_micros(self, usage: Usage) -> int | None:
        """Cost of one operation with ``usage``, in micro-units rounded up; None if unpriceable.

        Input and output tokens are priced at their own rates. With only a token
        total (no split), every token is priced at the dearer rate (the output
        rate on every real price list), so that an estimate never under-reserves;
        a split count whose own rate is missing is priced the same way.
        ``per_call`` is added once. An entry with no token rates prices calls
        only and ignores token counts.
        """
        dearest = self._dearest()
        total = Decimal(self.per_call)
        priced = self.per_call > 0
        inp, out = usage.input_tokens, usage.output_tokens
        pairs: list[tuple[int | None, int | None]] = (
            [(inp, self.input_per_mtok), (out, self.output_per_mtok)]
            if inp is not None or out is not None
            else [(usage.tokens, dearest)]
        )
        for tokens, rate in pairs:
            rate = rate if rate is not None else dearest
            if tokens is not None and rate is not None:
                total += Decimal(tokens) * rate / _MTOK
                priced = True
        if not priced:
            return None
        return int(total.to_integral_value(rounding="ROUND_CEILING"))

    def _dearest(self) -> int | None:
        rates = [r for r in (self.input_per_mtok, self.output_per_mtok) if r is not None]
        return max(rates) if rates else None


def resolve_paths(config: Config, base_dir: Path) -> Config:
    """Relative ``store.path`` and ``audit.path`` resolved against ``base_dir``.

    The raw values are checked first: resolved, "" would become the directory.
    """
    check_paths(config)

    def resolve(p: str) -> str:
        return p if Path(p).is_absolute() else str(base_dir / p)

    return msgspec.structs.replace(
        config,
        store=msgspec.structs.replace(config.store, path=resolve(config.store.path)),
        audit=msgspec.structs.replace(config.audit, path=resolve(config.audit.path)),
    )


def _positive(value: int | None, key: str, *, zero_ok: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise PolicyError(f"must be {'>= 0' if zero_ok else '> 0'}, not {value}", key=key)


def check_pool(config: Config) -> None:
    # [pool] is checked in one place, shared with GuardPool (policy/poolsettings.py).
    check_pool_settings(config.pool)
    check_memory_floor(config.pool)
    _positive(config.guards.timeout_ms, "guards.timeout_ms")
    _positive(config.guards.regex_max_mem, "guards.regex_max_mem")
    store = config.store
    for field in ("connect_timeout_ms", "op_timeout_ms", "reservation_ttl_ms"):
        _positive(getattr(store, field), f"store.{field}")
    if store.backend == "redis" and not store.url:
        raise PolicyError('the redis backend needs url = "redis://host:port/db"', key="store.url")
    if store.backend == "postgres":
        check_postgres(store.url, store.key_prefix, "store")
    audit = config.audit
    _positive(audit.op_timeout_ms, "audit.op_timeout_ms")
    if audit.backend == "postgres":
        check_postgres(audit.url, audit.schema, "audit")
        if not audit.chain.strip():
            raise PolicyError('must be "host", "run" or a chain name', key="audit.chain")


def check_postgres(url: str | None, schema: str, section: str) -> None:
    """A libpq URL without a password and a usable schema name (guardpool/pg/pool.py).

    The store names its schema ``key_prefix``, the ledger ``schema``."""
    try:
        from guardpool.pg.pool import check_schema, check_url
    except ModuleNotFoundError as exc:
        found = missing_extra(exc)
        if found is None:
            raise
        raise PolicyError(
            f"the postgres backend needs {found.install_line}", key=f"{section}.backend"
        ) from None
    try:
        check_url(url)
    except ValueError as exc:
        raise PolicyError(str(exc), key=f"{section}.url") from None
    try:
        check_schema(schema)
    except ValueError as exc:
        field = "key_prefix" if section == "store" else "schema"
        raise PolicyError(str(exc), key=f"{section}.{field}") from None


def check_guards(config: Config) -> None:
    seen: set[str] = set()
    for i, g in enumerate(config.guard):
        key = f"guard[{i}]"
        if not g.name.strip():
            raise PolicyError("a guard needs a name", key=f"{key}.name")
        if g.name in seen:
            raise PolicyError(f"duplicate guard name {g.name!r}", key=f"{key}.name")
        seen.add(g.name)
        has_regex = bool(g.deny_regex or g.require_regex)
        if has_regex and g.call:
            raise PolicyError(
                "a guard is either a regex bank or a callable, not both", key=f"{key}.call"
            )
        if not has_regex and not g.call:
            raise PolicyError("a guard needs deny_regex, require_regex or call", key=key)
        if not g.ops:
            raise PolicyError("ops must name at least one label pattern", key=f"{key}.ops")
        for j, pattern in enumerate(g.ops):
            try:
                validate_pattern(pattern)
            except ValueError as exc:
                raise PolicyError(str(exc), key=f"{key}.ops[{j}]") from None
        _positive(g.timeout_ms, f"{key}.timeout_ms")
        if g.privileged:
            for field in ("on_timeout", "on_error"):
                if getattr(g, field) == "allow":
                    raise PolicyError(
                        "a privileged guard can never fail open", key=f"{key}.{field}"
                    )
            for field in ("on_timeout", "on_error"):
                if getattr(g, field) is None and getattr(config.guards, field) == "allow":
                    raise PolicyError(
                        f'a privileged guard can never fail open; [guards] {field} = "allow" '
                        f'would apply: set {field} = "deny" on this guard',
                        key=f"{key}.{field}",
                    )


def _checked_key(section: str, pattern: str) -> str:
    """The key path of a pattern-keyed entry, once the pattern itself is known to be valid."""
    key = pattern_key(section, pattern)
    try:
        validate_pattern(pattern)
    except ValueError as exc:
        raise PolicyError(str(exc), key=key) from None
    return key


def _money_micros(value: str | int | None, key: str) -> int | None:
    if value is None:
        return None
    try:
        return to_micros(parse_money(value))
    except ValueError as exc:
        raise PolicyError(str(exc), key=key) from None


def _check_dimensions(dimensions: dict[str, int], key: str) -> None:
    for name, value in dimensions.items():
        where = f"{key}.dimensions.{toml_key(name)}"
        if name in _CORE_DIMENSIONS or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
            raise PolicyError(
                f"custom dimension {name!r} must be lower_snake_case (at most 64 characters) "
                f"and not one of {', '.join(_CORE_DIMENSIONS)}",
                key=where,
            )
        _positive(value, where, zero_ok=True)


def compile_limit(pattern: str, spec: LimitSpec) -> CompiledLimit:
    key = _checked_key("limits", pattern)
    dims: dict[str, int] = {}
    for name in ("calls", "tokens", "wall_ms"):
        value = getattr(spec, name)
        _positive(value, f"{key}.{name}", zero_ok=True)
        if value is not None:
            dims[name] = value
    cost = _money_micros(spec.cost, f"{key}.cost")
    if cost is not None:
        dims["cost"] = cost
    _check_dimensions(spec.dimensions, key)
    dims.update(spec.dimensions)
    if not dims:
        raise PolicyError(
            "a limit needs at least one of calls, tokens, cost, wall_ms or dimensions", key=key
        )
    if spec.window == "run":
        window_ms = 0
    else:
        try:
            window_ms = parse_duration_ms(spec.window)
        except ValueError as exc:
            raise PolicyError(f'{exc} or "run"', key=f"{key}.window") from None
    # warn_at = 0 would warn on every operation (None switches warnings off);
    # margin = 0 is meaningful: no safety margin, only `used + reserved < limit`.
    if spec.warn_at is not None and not 0 < spec.warn_at <= 1:
        raise PolicyError(
            f"must be a fraction with 0 < warn_at <= 1, not {spec.warn_at}", key=f"{key}.warn_at"
        )
    if not 0 <= spec.margin <= 1:
        raise PolicyError(
            f"must be a fraction with 0 <= margin <= 1, not {spec.margin}", key=f"{key}.margin"
        )
    return CompiledLimit(
        pattern=pattern,
        dimensions=dims,
        window_ms=window_ms,
        window=spec.window,
        scope=spec.scope,
        enforcement=spec.enforcement,
        on_exceed=spec.on_exceed,
        warn_at=spec.warn_at,
        on_warn_at=spec.on_warn_at,
        margin=spec.margin,
    )


def compile_estimate(pattern: str, spec: EstimateSpec) -> Usage:
    key = _checked_key("estimates", pattern)
    for name in ("tokens", "input_tokens", "output_tokens", "wall_ms"):
        _positive(getattr(spec, name), f"{key}.{name}", zero_ok=True)
    _check_dimensions(spec.dimensions, key)
    cost = _money_micros(spec.cost, f"{key}.cost")
    return Usage(
        tokens=spec.tokens,
        input_tokens=spec.input_tokens,
        output_tokens=spec.output_tokens,
        cost=Decimal(cost) / MICROS if cost is not None else None,
        wall_ms=spec.wall_ms,
        extra=dict(spec.dimensions),
    )


def compile_price(pattern: str, spec: PriceSpec) -> CompiledPrice:
    key = _checked_key("prices", pattern)
    price = CompiledPrice(
        pattern=pattern,
        input_per_mtok=_money_micros(spec.input_per_mtok, f"{key}.input_per_mtok"),
        output_per_mtok=_money_micros(spec.output_per_mtok, f"{key}.output_per_mtok"),
        per_call=_money_micros(spec.per_call, f"{key}.per_call") or 0,
    )
    if price.input_per_mtok is None and price.output_per_mtok is None and not price.per_call:
        raise PolicyError("a price needs input_per_mtok, output_per_mtok or per_call", key=key)
    return price
