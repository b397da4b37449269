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

from guardpool.policy.bounds import MAX_AMOUNT
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


# The largest policy file read (MiB). A 17 MB policy of 300,000 guards loads (in
# 47 s and 880 MB); `--config /dev/zero` used to read until the OOM killer came.
MAX_POLICY_MB = 64


def _parse_file(path: Path, name: str) -> dict[str, Any]:
    cap = MAX_POLICY_MB << 20
    try:
        with path.open("rb") as f:
            raw = f.read(cap + 1)
        if len(raw) > cap:
            raise PolicyError(f"larger than {MAX_POLICY_MB} MiB: not read", file=name)
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
        except RecursionError:
            raise PolicyError("invalid JSON: nested too deeply", file=name) from None
        except ValueError as exc:  # an integer of more than 4300 digits
            raise PolicyError(f"invalid JSON: {exc}", file=name) from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"invalid TOML: {exc}", file=name) from None
        except RecursionError:
            raise PolicyError("invalid TOML: nested too deeply", file=name) from None
        except ValueError as exc:  # an integer of more than 4300 digits
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
    """The key path of a pattern-keyed entry: ``limits."exe:llm:*"``.

    JSON quoting: a hostile pattern's newline or control character is shown
    escaped, so the error stays one line.
    """
    return f"{section}.{json.dumps(pattern)}"


def toml_key(name: str) -> str:
    """A key as TOML spells it: bare when it can be, quoted (and escaped) otherwise."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def at_most(bound: int) -> str:
    return f"must be at most {bound:_} (see docs/limits-and-inputs.md)"


_KEYED_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "limits": LimitSpec,
    "prices": PriceSpec,
    "estimates": EstimateSpec,
}


def _refuse_unencodable(data: Any, file: str) -> None:
    """A lone surrogate (a JSON ``"\\ud800"`` escape, or a dict built in Python) is not
    UTF-8: refused here, naming its key, rather than failing later in the digest or a guard.
    Iterative: the data may be nested as deep as the parser allowed."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                reason = f"not valid Unicode text (a lone surrogate at position {exc.start})"
                raise PolicyError(reason, key=key, file=file) from None
        elif isinstance(value, list):
            stack.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, dict):
            for name, child in value.items():
                try:
                    str(name).encode("utf-8")
                except UnicodeEncodeError:
                    reason = "a key is not valid Unicode text (a lone surrogate)"
                    raise PolicyError(reason, key=key, file=file) from None
                part = toml_key(str(name))
                stack.append((f"{key}.{part}" if key else part, child))


def decode_config(data: dict[str, Any], file: str) -> Config:
    """``data`` as a Config, strictly (no coercion, no unknown keys)."""
    _refuse_unencodable(data, file)
    # msgspec reports a bad value under a dict key as `[...]`; decoding the
    # pattern-keyed sections entry by entry first lets the error name the pattern.
    for section, spec_type in _KEYED_SECTIONS.items():
        entries = data.get(section)
        if isinstance(entries, dict):
            for pattern, entry in entries.items():
                key = pattern_key(section, str(pattern))
                if isinstance(entry, dict) and isinstance(entry.get("dimensions"), dict):
                    _check_dimension_values(entry["dimensions"], f"{key}.dimensions", file)
                _decode(entry, spec_type, file, key)
    config: Config = _decode(data, Config, file, "")
    return config


def _check_dimension_values(dimensions: dict[Any, Any], key: str, file: str) -> None:
    """msgspec names a bad value under a dict key ``[...]``; here the error names the key."""
    for name, value in dimensions.items():
        where = f"{key}.{toml_key(str(name))}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(
                f"must be an integer, not {type(value).__name__}", key=where, file=file
            )
        if value > MAX_AMOUNT:
            raise PolicyError(at_most(MAX_AMOUNT), key=where, file=file)


def _decode(data: Any, spec_type: type[Any], file: str, prefix: str) -> Any:
    try:
        return msgspec.convert(data, spec_type, strict=True)
    except RecursionError:
        raise PolicyError("nested too deeply", key=prefix, file=file) from None
    except msgspec.ValidationError as exc:
        message = str(exc)
        reason, _, where = message.rpartition(" - at `")
        if not reason:
            reason, where = message, ""
        key = _key_path(where.rstrip("`"))
        if reason.startswith("Object contains unknown field"):
            field = reason.split("`")[1] if "`" in reason else "?"
            key = f"{key}.{toml_key(field)}" if key else toml_key(field)
            reason = f"unknown key {field!r}"
        full = f"{prefix}.{key}" if prefix and key else prefix or key
        bound = re.fullmatch(r"Expected `int` <= (\d+)", reason)
        if bound is not None:
            reason = at_most(int(bound.group(1)))
        elif reason.startswith("Expected `object` of length <="):
            reason = f"at most {reason.rsplit(' ', 1)[-1]} entries"
        if "got `float`" in reason and full.endswith(("cost", "_per_mtok", "per_call")):
            reason = 'money must be a string like "$5.00", not a float (floats lose cents)'
        raise PolicyError(reason, key=full, file=file) from None
