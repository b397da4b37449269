"""Policy sources decoded into a ``Config``: files, dicts, hand-built Configs.

    file (.toml/.json) ─► bytes ─► UTF-8 ─► tomllib / json (duplicate keys refused) ─┐
    dict ────────────────────────────────────────────────────────────────────────────┤
    Config (hand-built, so never type-checked) ─► msgspec.to_builtins ───────────────┤
                                                                                     ▼
                      msgspec.convert(Config, strict) ── ValidationError $.path ──► PolicyError

Every problem is a PolicyError naming the file, the key path
(``limits."exe:llm:*".cost``, ``guard[1].deny_regex[0]``) and the reason, so a
user can go straight to the line. Compilation (cross-field checks, RE2, money
and durations) is ``compile.py``'s job.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from guardpool.policy.config import Config, EstimateSpec, LimitSpec, PriceSpec
from guardpool.policy.errors import PolicyError


class Source(msgspec.Struct, frozen=True):
    """A decoded policy and where it came from.

    ``base_dir`` is where relative paths resolve; ``import_path`` is where guard
    modules are looked for besides the normal import path (a file's directory
    and its parent; nothing for a dict or Config).
    """

    config: Config
    name: str
    base_dir: Path
    import_path: tuple[str, ...] = ()


def read_source(source: str | Path | dict[str, Any] | Config) -> Source:
    """Decode any policy source strictly; PolicyError names the file and key."""
    if isinstance(source, Config):
        # A hand-built Config skipped msgspec's type checks: decode it again strictly.
        return Source(decode_config(msgspec.to_builtins(source), ""), "<config>", Path.cwd())
    if isinstance(source, dict):
        return Source(decode_config(source, ""), "<dict>", Path.cwd())
    path = Path(source)
    name = str(path)
    data = _parse_file(path, name)
    base_dir = path.resolve().parent
    # The parent too, so that examples/guardpool.toml can name examples.guards:check_shell
    # (a package beside the policy's directory) whatever the working directory.
    import_path = (str(base_dir), str(base_dir.parent))
    return Source(decode_config(data, name), name, base_dir, import_path)


def _parse_file(path: Path, name: str) -> dict[str, Any]:
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
    return data


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


def pattern_key(section: str, pattern: str) -> str:
    """The key path of a pattern-keyed entry: ``limits."exe:llm:*"``."""
    return f'{section}."{pattern}"'


_KEYED_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "limits": LimitSpec,
    "prices": PriceSpec,
    "estimates": EstimateSpec,
}


def decode_config(data: dict[str, Any], file: str) -> Config:
    """``data`` as a Config, strictly (no coercion, no unknown keys)."""
    # msgspec reports a bad value under a dict key as `[...]`; decoding the
    # pattern-keyed sections entry by entry first lets the error name the pattern.
    for section, spec_type in _KEYED_SECTIONS.items():
        entries = data.get(section)
        if isinstance(entries, dict):
            for pattern, entry in entries.items():
                _decode(entry, spec_type, file, pattern_key(section, str(pattern)))
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
