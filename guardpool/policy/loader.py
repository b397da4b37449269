"""Loading a policy: decode strictly, check across fields, compile.

    file (.toml/.json) or dict ──► msgspec.convert(Config, strict) ──► checks ──► Policy
                                          │ ValidationError $.path           │
                                          └──────► PolicyError(file, key path, reason)

Every problem is a PolicyError naming the file, the key path
(``limits."exe:llm:*".cost``, ``guard[1].deny_regex[0]``) and the reason, so a
user can go straight to the line. Money becomes integer micro-units here;
durations become milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import msgspec

from guardpool.policy.config import Config, EstimateSpec, LimitSpec, PriceSpec
from guardpool.policy.errors import PolicyError
from guardpool.policy.guards import CompiledGuard, compile_guards
from guardpool.policy.labels import match, matches_any, specificity, validate_pattern
from guardpool.policy.model import Usage
from guardpool.policy.money import MICROS, parse_duration_ms, parse_money, to_micros

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
    on_exceed: Literal["deny", "warn"]
    warn_at: float | None
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


class Policy:
    """A loaded, validated, compiled policy."""

    def __init__(
        self, config: Config, source: str, base_dir: Path, *, import_guards_from_dir: bool = False
    ) -> None:
        self.config = config
        self.source = source
        self.base_dir = base_dir
        canonical = msgspec.json.encode(msgspec.to_builtins(config), order="sorted")
        self.digest = hashlib.sha256(canonical).hexdigest()
        _check_guards(config)
        if import_guards_from_dir:
            _make_importable(base_dir)
        self.guards: dict[str, CompiledGuard] = compile_guards(config.guard, config.guards)
        self.limits: list[CompiledLimit] = [
            _compile_limit(p, spec) for p, spec in config.limits.items()
        ]
        self._estimates = {p: _compile_estimate(p, e) for p, e in config.estimates.items()}
        self._prices = {p: _compile_price(p, spec) for p, spec in config.prices.items()}
        _check_pool(config)

    def guards_for(self, labels: Sequence[str], phase: str) -> list[CompiledGuard]:
        return [
            g
            for g in self.guards.values()
            if g.spec.phase == phase and any(matches_any(p, labels) for p in g.spec.ops)
        ]

    def limits_for(self, labels: Sequence[str]) -> list[CompiledLimit]:
        return [lim for lim in self.limits if matches_any(lim.pattern, labels)]

    def estimate_for(self, labels: Sequence[str]) -> Usage | None:
        pattern = _most_specific(self._estimates, labels)
        return self._estimates[pattern] if pattern is not None else None

    def price_for(self, labels: Sequence[str]) -> CompiledPrice | None:
        pattern = _most_specific(self._prices, labels)
        return self._prices[pattern] if pattern is not None else None


def _most_specific(table: dict[str, Any], labels: Sequence[str]) -> str | None:
    candidates = [p for p in table if any(match(p, label) for label in labels)]
    return max(candidates, key=specificity) if candidates else None


# ------------------------------------------------------------------ loading


def load_policy(source: str | Path | dict[str, Any] | Config) -> Policy:
    """Load and compile a policy from a TOML/JSON file, a dict or a Config.

    A file is TOML unless its name ends in ``.json``. Guard callables resolve
    through the normal import system; for a file, its directory and that
    directory's parent are put first on ``sys.path`` (see ``_make_importable``).
    A dict or Config resolves relative paths against the working directory and
    leaves ``sys.path`` alone.
    """
    if isinstance(source, Config):
        # A hand-built Config skipped msgspec's type checks: decode it again strictly.
        return _build(_convert(msgspec.to_builtins(source), ""), "<config>", Path.cwd())
    if isinstance(source, dict):
        return _build(_convert(source, ""), "<dict>", Path.cwd())
    path = Path(source)
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError("no such file", file=name) from None
    except OSError as exc:
        raise PolicyError(f"cannot read: {exc.strerror}", file=name) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"not UTF-8 (byte {exc.start})", file=name) from None
    data: Any
    if path.suffix.lower() == ".json":
        # The stdlib parser rather than msgspec.json: its errors carry line and column.
        try:
            data = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"invalid JSON: {exc}", file=name) from None
        except _DuplicateKey as exc:
            raise PolicyError(
                f"invalid JSON: duplicate key {exc.args[0]!r} (TOML refuses these too)", file=name
            ) from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"invalid TOML: {exc}", file=name) from None
    if not isinstance(data, dict):
        raise PolicyError("the top level must be a table/object", file=name)
    try:
        return _build(_convert(data, name), name, path.resolve().parent, from_file=True)
    except PolicyError as exc:
        raise exc.located(file=name) from None


class _DuplicateKey(Exception):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of two equal keys silently; a policy must not."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_PATH_PART = re.compile(
    r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[\"((?:[^\"\\]|\\.)*)\"\]|\[([^\]]*)\]"
)


def _key_path(msgspec_path: str) -> str:
    """msgspec's ``$.limits["exe:llm:*"].cost`` as ``limits."exe:llm:*".cost``."""
    out = ""
    for ident, index, quoted, other in _PATH_PART.findall(msgspec_path.removeprefix("$")):
        if ident:
            out += f".{ident}" if out else ident
        elif index:
            out += f"[{index}]"
        else:
            key = quoted or other
            out += f'."{key}"' if out else f'"{key}"'
    return out


_KEYED_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "limits": LimitSpec,
    "prices": PriceSpec,
    "estimates": EstimateSpec,
}


def _convert(data: dict[str, Any], file: str) -> Config:
    # msgspec reports a bad value under a dict key as `[...]`; decoding the
    # pattern-keyed sections entry by entry first lets the error name the pattern.
    for section, spec_type in _KEYED_SECTIONS.items():
        entries = data.get(section)
        if isinstance(entries, dict):
            for pattern, entry in entries.items():
                _decode(entry, spec_type, file, _pattern_key(section, str(pattern)))
    config: Config = _decode(data, Config, file, "")
    return config


def _decode(data: Any, spec_type: type[Any], file: str, prefix: str) -> Any:
    try:
        return msgspec.convert(data, spec_type, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        reason, _, where = message.rpartition(" - at `")
        if not reason:
            reason, where = message, ""
        key = _key_path(where.rstrip("`"))
        if reason.startswith("Object contains unknown field"):
            field = reason.split("`")[1] if "`" in reason else "?"
            key = f"{key}.{field}" if key else field
            reason = f"unknown key {field!r}"
        full = f"{prefix}.{key}" if prefix and key else prefix or key
        if "got `float`" in reason and full.endswith(("cost", "_per_mtok", "per_call")):
            reason = 'money must be a string like "$5.00", not a float (floats lose cents)'
        raise PolicyError(reason, key=full, file=file) from None


def _build(config: Config, source: str, base_dir: Path, *, from_file: bool = False) -> Policy:
    config = _resolve_paths(config, base_dir)
    return Policy(config, source, base_dir, import_guards_from_dir=from_file)


def _resolve_paths(config: Config, base_dir: Path) -> Config:
    def resolve(p: str) -> str:
        return p if Path(p).is_absolute() else str(base_dir / p)

    return msgspec.structs.replace(
        config,
        store=msgspec.structs.replace(config.store, path=resolve(config.store.path)),
        audit=msgspec.structs.replace(config.audit, path=resolve(config.audit.path)),
    )


def _make_importable(base_dir: Path) -> None:
    """Guard modules resolve next to the policy file and from its parent, like a script's.

    The parent is there so that ``examples/guardpool.toml`` can name
    ``examples.guards:check_shell`` (a package beside the policy's directory)
    whatever the working directory.

    The entries stay on ``sys.path`` so that the worker zygote, which starts
    with the host's ``sys.path``, imports guards from the same place the
    loader checked them.
    """
    for entry in (str(base_dir.parent), str(base_dir)):
        if entry not in sys.path:
            sys.path.insert(0, entry)


# ------------------------------------------------------------------- checks


def _positive(value: int | None, key: str, *, zero_ok: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise PolicyError(f"must be {'>= 0' if zero_ok else '> 0'}, not {value}", key=key)


def _check_pool(config: Config) -> None:
    pool = config.pool
    for field in (
        "workers",
        "job_timeout_ms",
        "job_cpu_ms",
        "memory_mb",
        "max_rss_mb",
        "max_jobs_per_worker",
        "max_input_bytes",
    ):
        _positive(getattr(pool, field), f"pool.{field}")
    for i, module in enumerate(pool.preload):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", module):
            raise PolicyError(f"{module!r} is not a module name", key=f"pool.preload[{i}]")
    _positive(config.guards.timeout_ms, "guards.timeout_ms")
    _positive(config.guards.regex_max_mem, "guards.regex_max_mem")
    store = config.store
    for field in ("connect_timeout_ms", "op_timeout_ms", "reservation_ttl_ms"):
        _positive(getattr(store, field), f"store.{field}")
    if store.backend == "redis" and not store.url:
        raise PolicyError('the redis backend needs url = "redis://host:port/db"', key="store.url")


def _check_guards(config: Config) -> None:
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


def _pattern_key(section: str, pattern: str) -> str:
    return f'{section}."{pattern}"'


def _checked_key(section: str, pattern: str) -> str:
    """The key path of a pattern-keyed entry, once the pattern itself is known to be valid."""
    key = _pattern_key(section, pattern)
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
        if name in _CORE_DIMENSIONS or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise PolicyError(
                f"custom dimension {name!r} must be lower_snake_case and not one of "
                f"{', '.join(_CORE_DIMENSIONS)}",
                key=f"{key}.dimensions",
            )
        _positive(value, f"{key}.dimensions.{name}", zero_ok=True)


def _compile_limit(pattern: str, spec: LimitSpec) -> CompiledLimit:
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
        margin=spec.margin,
    )


def _compile_estimate(pattern: str, spec: EstimateSpec) -> Usage:
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


def _compile_price(pattern: str, spec: PriceSpec) -> CompiledPrice:
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
