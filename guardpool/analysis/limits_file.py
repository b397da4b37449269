"""Write the user's own policy file back with only the tuned limits changed.

TOML goes through tomlkit, which keeps comments, order and formatting, so the
diff against the original is exactly the changed values. JSON has no comments
to keep: it is re-emitted with its key order and two-space indentation.

The result is checked by loading it with the real loader before it replaces
anything; the write itself is atomic (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardpool.extras import MissingExtra, require
from guardpool.policy.loader import load_policy


class WriteError(Exception):
    """The tuned file cannot be produced (missing extra, bad destination)."""


@dataclass(frozen=True)
class Change:
    key: str  # e.g. "pool.memory_mb", 'guard."shell".timeout_ms'
    old: int | None
    new: int


def _tomlkit() -> Any:
    try:
        return require("tomlkit")
    except MissingExtra as exc:
        raise WriteError(f"bench --write (tomlkit keeps your comments): {exc}") from None


def rewrite(
    source: Path, pool: dict[str, int], guard_timeouts: dict[str, int]
) -> tuple[str, list[Change]]:
    """The source file's text with ``[pool]`` keys and per-guard ``timeout_ms`` replaced."""
    text = source.read_text(encoding="utf-8")
    if source.suffix.lower() == ".json":
        data = json.loads(text)
        changes = _apply(data, pool, guard_timeouts, new_table=dict)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n", changes
    tomlkit = _tomlkit()
    doc = tomlkit.parse(text)
    changes = _apply(doc, pool, guard_timeouts, new_table=tomlkit.table)
    return str(tomlkit.dumps(doc)), changes


def _apply(
    doc: Any, pool: dict[str, int], guard_timeouts: dict[str, int], new_table: Any
) -> list[Change]:
    changes: list[Change] = []
    if "pool" not in doc:
        doc["pool"] = new_table()
    table = doc["pool"]
    for key, value in pool.items():
        old = table.get(key)
        if old != value:
            table[key] = value
            changes.append(Change(f"pool.{key}", None if old is None else int(old), value))
    for entry in doc.get("guard", []):
        name = entry.get("name")
        if name in guard_timeouts:
            old = entry.get("timeout_ms")
            value = guard_timeouts[name]
            if old != value:
                entry["timeout_ms"] = value
                changes.append(
                    Change(f"guard.{name}.timeout_ms", None if old is None else int(old), value)
                )
    return changes


def write(out: Path, text: str, like: Path) -> None:
    """Atomically write ``text`` to ``out`` after checking that it loads as a policy.

    The check loads a copy placed beside ``out`` (relative store/audit paths
    and guard modules beside the policy resolve as they will for ``out``).
    """
    directory = out.resolve().parent
    if not directory.is_dir():
        raise WriteError(f"--write: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=like.suffix, dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        load_policy(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
