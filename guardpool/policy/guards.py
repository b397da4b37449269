"""Guard specs compiled into something that can evaluate an input.

Two kinds: a **regex** guard is a bank of RE2 patterns (``deny_regex``: any match
denies; ``require_regex``: no match denies); a **callable** guard is a Python
function ``(input, ctx) -> Verdict | bool`` named ``"module:function"``.

Compilation happens in the host (to validate the policy) and again in the
worker zygote (which imports the callables once, before forking workers).
The host imports a callable's top-level package from the policy's
``import_path`` first, without touching ``sys.path``; the zygote gets the same
directories at the front of its own ``sys.path`` from the pool.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, Literal, Protocol

import msgspec

from guardpool.policy.config import GuardDefaults, GuardSpec
from guardpool.policy.errors import PolicyError
from guardpool.policy.inputs import guard_bytes
from guardpool.policy.regex import RegexBank
from guardpool.policy.verdict import Verdict


class GuardContext(Protocol):
    """What a callable guard sees besides its input."""

    labels: tuple[str, ...]
    run_id: str
    principal: str
    phase: str

    def remaining_ms(self) -> float: ...

    def regex(self, pattern: str) -> Any: ...

    def guard(self, name: str, value: Any) -> Verdict: ...


GuardFunction = Callable[[Any, GuardContext], object]


def import_module(name: str, import_path: Sequence[str] = ()) -> ModuleType:
    """Import ``name``, looking for its top-level package in ``import_path`` first.

    Only the top-level package is found by hand (``PathFinder`` over the given
    directories); its submodules then import normally through the package's
    ``__path__``. A top-level package already imported is used as it is.
    """
    top = name.partition(".")[0]
    if import_path and top not in sys.modules:
        spec = importlib.machinery.PathFinder.find_spec(top, list(import_path))
        if spec is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module
            try:
                if spec.loader is not None:  # None: a namespace package, nothing to run
                    spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
    return importlib.import_module(name)


def resolve_callable(ref: str, import_path: Sequence[str] = ()) -> GuardFunction:
    """Import ``"module:function"``; ValueError with the reason when it cannot be used."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{ref!r} is not of the form 'module:function'")
    try:
        module = import_module(module_name, import_path)
    except (Exception, SystemExit) as exc:  # a module that exits on import is a bad reference too
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ValueError(f"{ref!r} is not callable")
    fn: GuardFunction = target
    return fn


class CompiledGuard:
    """A guard ready to evaluate; ``spec`` has every default resolved."""

    __slots__ = ("_deny", "_fn", "_require", "kind", "spec")

    def __init__(
        self, spec: GuardSpec, defaults: GuardDefaults, import_path: Sequence[str] = ()
    ) -> None:
        self.spec = msgspec.structs.replace(
            spec,
            timeout_ms=spec.timeout_ms if spec.timeout_ms is not None else defaults.timeout_ms,
            on_timeout=spec.on_timeout or defaults.on_timeout,
            on_error=spec.on_error or defaults.on_error,
        )
        self.kind: Literal["regex", "callable"] = "callable" if spec.call else "regex"
        self._fn: GuardFunction | None = None
        self._deny: RegexBank | None = None
        self._require: RegexBank | None = None
        if spec.call:
            try:
                self._fn = resolve_callable(spec.call, import_path)
            except ValueError as exc:
                raise PolicyError(str(exc), key="call") from None
        else:
            max_mem = defaults.regex_max_mem
            self._deny = _bank(spec.name, spec.deny_regex, max_mem, "deny_regex")
            self._require = _bank(spec.name, spec.require_regex, max_mem, "require_regex")

    @property
    def banks(self) -> dict[str, RegexBank]:
        """The regex banks by key (for lint), empty for callables."""
        return {
            k: b for k, b in (("deny_regex", self._deny), ("require_regex", self._require)) if b
        }

    def evaluate(self, value: Any, ctx: GuardContext) -> object:
        if self._fn is not None:
            return self._fn(value, ctx)
        return self.scan(guard_bytes(value))

    def scan(self, data: bytes) -> Verdict:
        """A regex guard's verdict on an input's bytes (``policy/inputs.py``)."""
        name = self.spec.name
        if self._deny is not None:
            hit = self._deny.first_match(data)
            if hit is not None:
                return Verdict.deny(self.spec.reason or f"guard {name}: deny_regex[{hit}] matched")
        if self._require is not None and self._require.first_match(data) is None:
            return Verdict.deny(self.spec.reason or f"guard {name}: no require_regex matched")
        return _ALLOW


# A bank's usual answer; a Verdict is frozen, so one serves every scan.
_ALLOW = Verdict.allow()


def _bank(guard: str, patterns: list[str], max_mem: int, key: str) -> RegexBank | None:
    if not patterns:
        return None
    try:
        return RegexBank(patterns, max_mem)
    except PolicyError as exc:
        # The key path gives the guard's index; the name is what the author searches for.
        named = PolicyError(f"guard {guard!r}: {exc.reason}", key=exc.key)
        raise named.located(key_prefix=key) from None


def compile_guards(
    specs: Iterable[GuardSpec], defaults: GuardDefaults, *, import_path: Sequence[str] = ()
) -> dict[str, CompiledGuard]:
    """Compile specs in order; errors carry the key path ``guard[i]...``."""
    compiled: dict[str, CompiledGuard] = {}
    for index, spec in enumerate(specs):
        try:
            compiled[spec.name] = CompiledGuard(spec, defaults, import_path)
        except PolicyError as exc:
            raise exc.located(key_prefix=f"guard[{index}]") from None
    return compiled
