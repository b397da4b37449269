"""Fuzz findings on disk: one JSON reproducer per (guard, kind), and SARIF for code scanning.

A reproducer holds everything a replay needs, with absolute paths, so that
``guardpool fuzz --replay FILE`` works from any directory::

    {"format": "guardpool-fuzz-finding/1", "guard": ..., "kind": ...,
     "policy": "/abs/policy.toml", "policy_digest": ..., "sys_path": ["/abs/cwd"],
     "labels": [...], "input": {"text": ...} | {"base64": ...}, "length": ...,
     "original_length": ..., "detail": ..., "job": {...}, "replay": "guardpool fuzz --replay ..."}

``sys_path`` is the directory fuzz ran from: guard modules that were importable
there (``tests.planted.bad_guards``) stay importable when replayed elsewhere.
A reproducer is therefore trusted like a policy file: replaying one loads the
policy it names, which imports and runs that policy's guard modules, found
along ``sys_path``. ``read`` checks the file's shape (a hostile or broken one is
BadReproducer, naming the field), not whether its author is to be trusted.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import stat
from pathlib import Path
from typing import Any

from guardpool.analysis.astscan import module_file
from guardpool.analysis.fuzzing import Finding, Kind, decode_value, encode_value
from guardpool.policy.bounds import MAX_INPUT_BYTES
from guardpool.policy.guards import CompiledGuard
from guardpool.policy.labels import validate_labels

FORMAT = "guardpool-fuzz-finding/1"

RULES: dict[str, tuple[str, str]] = {
    "timeout": ("GP-FUZZ-TIMEOUT", "the guard was killed at its deadline or CPU budget"),
    "crash": ("GP-FUZZ-CRASH", "the worker running the guard died"),
    "memory": ("GP-FUZZ-MEMORY", "the guard hit the worker memory limit"),
    "error": ("GP-FUZZ-ERROR", "the guard's own code raised or returned no verdict"),
    "re-disagreement": (
        "GP-FUZZ-RE-DISAGREE",
        "an RE2 bank and Python re disagree on the same ASCII input",
    ),
}
HINTS: dict[str, str] = {
    "timeout": "make the guard linear in its input (RE2 via ctx.regex, bounded loops) "
    "or cap the text it inspects",
    "crash": "look for native extensions, os._exit or signals in the guard",
    "memory": "stream or cap what the guard builds from its input, or raise [pool] memory_mb "
    "(guardpool bench measures what it needs)",
    "error": "handle this input in the guard (it is hostile text: lone surrogates, odd Unicode, "
    "bytes) and return a Verdict",
    "re-disagreement": "the pattern means something else under RE2; see docs/regex.md",
}


def file_name(guard: str, kind: Kind) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", guard).strip("._") or "guard"
    return f"{safe}-{kind}.json"


def replay_command(path: Path) -> str:
    return f"guardpool fuzz --replay {shlex.quote(str(path.resolve()))}"


def record(
    finding: Finding,
    *,
    policy_path: Path,
    policy_digest: str,
    labels: tuple[str, ...],
    path: Path,
) -> dict[str, Any]:
    job = finding.job
    return {
        "format": FORMAT,
        "guard": finding.guard,
        "kind": finding.kind,
        "detail": finding.detail,
        "policy": str(policy_path.resolve()),
        "policy_digest": policy_digest,
        "sys_path": [str(Path.cwd())],
        "labels": list(labels),
        "input": encode_value(finding.value),
        "length": len(finding.value),
        "original_length": finding.original_length,
        "seen": finding.seen,
        "reproduced": f"{finding.confirmed}/{finding.attempts}",
        "job": {
            "outcome": job.outcome,
            "limit": job.limit,
            "wall_ms": round(job.wall_ms, 3),
            "error": job.error,
        }
        if job is not None
        else None,
        "hint": HINTS[finding.kind],
        "replay": replay_command(path),
    }


def write(directory: Path, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name(data["guard"], data["kind"])
    # ensure_ascii: lone surrogates are written as \\udXXX escapes and read back intact.
    path.write_text(json.dumps(data, indent=2, ensure_ascii=True) + "\n", encoding="ascii")
    return path


class BadReproducer(ValueError):
    pass


# The largest reproducer read: the largest input a policy accepts (MAX_INPUT_BYTES),
# base64-encoded, with room for the rest. `--replay /dev/zero` read until MemoryError.
MAX_REPRODUCER_BYTES = 2 * MAX_INPUT_BYTES


def _read_bounded(path: Path) -> bytes:
    """The file's bytes; BadReproducer for a device, a FIFO or a file over the cap."""
    # O_NONBLOCK: opening a FIFO nobody writes to would wait forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadReproducer(f"{path} is not a regular file (fuzz writes reproducers as files)")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_REPRODUCER_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_REPRODUCER_BYTES:
        raise BadReproducer(f"{path} is larger than {MAX_REPRODUCER_BYTES >> 20} MiB: not read")
    return raw


def read(path: Path) -> dict[str, Any]:
    """A reproducer, checked field by field; BadReproducer names what is wrong."""
    try:
        data = json.loads(_read_bounded(path).decode("utf-8"))
    except OSError as exc:
        raise BadReproducer(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadReproducer(f"{path} is not a JSON reproducer: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadReproducer(f"{path} is not a guardpool fuzz finding (format != {FORMAT!r})")
    for key, kind in (("guard", str), ("kind", str), ("policy", str), ("labels", list)):
        if not isinstance(data.get(key), kind):
            raise BadReproducer(f"{path}: {key!r} is missing or not a {kind.__name__}")
    if data["kind"] not in RULES:
        raise BadReproducer(f"{path}: unknown kind {data['kind']!r}")
    # Checked here, not where they are used: a label that is not a string reached a
    # worker and killed it, and a sys_path that is a number was a traceback.
    if not all(isinstance(label, str) for label in data["labels"]):
        raise BadReproducer(f"{path}: 'labels' must be a list of strings")
    try:
        data["labels"] = list(validate_labels(data["labels"]))
    except ValueError as exc:
        raise BadReproducer(f"{path}: {exc}") from None
    sys_path = data.get("sys_path", [])
    if not isinstance(sys_path, list) or not all(
        isinstance(p, str) and Path(p).is_absolute() for p in sys_path
    ):
        raise BadReproducer(f"{path}: 'sys_path' must be a list of absolute directories")
    if not isinstance(data.get("policy_digest", ""), str):
        raise BadReproducer(f"{path}: 'policy_digest' is not a str")
    try:
        data["value"] = decode_value(data.get("input"))
    except ValueError as exc:
        raise BadReproducer(f"{path}: {exc}") from None
    return data


# -- SARIF 2.1.0 ----------------------------------------------------------------------------


def guard_location(guard: CompiledGuard, policy_path: Path) -> tuple[Path, int]:
    """Where to point a code-scanning UI: the guard function, else its policy entry."""
    if guard.spec.call:
        module, _, func = guard.spec.call.partition(":")
        source = module_file(module)
        if source is not None:
            try:
                tree = ast.parse(source.read_text(encoding="utf-8"))
            except (OSError, SyntaxError, UnicodeDecodeError):
                tree = None
            for node in ast.walk(tree) if tree is not None else ():
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == func:
                    return source, node.lineno
    try:
        lines = policy_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return policy_path, 1
    needle = re.compile(r"""["']?name["']?\s*[=:]\s*["']""" + re.escape(guard.spec.name) + "[\"']")
    for number, line in enumerate(lines, 1):
        if needle.search(line):
            return policy_path, number
    return policy_path, 1


def sarif(
    records: list[dict[str, Any]], locations: dict[str, tuple[Path, int]], version: str
) -> dict[str, Any]:
    results = []
    for r in records:
        rule, _ = RULES[r["kind"]]
        path, line = locations.get(r["guard"], (Path(r["policy"]), 1))
        results.append(
            {
                "ruleId": rule,
                "level": "error",
                "message": {
                    "text": f"guard {r['guard']!r}: {r['detail']} on a {r['length']}-character "
                    f"input. {r['hint']}. Replay: {r['replay']}"
                },
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": {"uri": path.resolve().as_uri()},
                            "region": {"startLine": line},
                        }
                    }
                ],
                "partialFingerprints": {"guardpoolFinding": f"{r['guard']}/{r['kind']}"},
            }
        )
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "guardpool fuzz",
                        "version": version,
                        "rules": [
                            {
                                "id": rule,
                                "shortDescription": {"text": text},
                                "help": {"text": HINTS[kind]},
                            }
                            for kind, (rule, text) in RULES.items()
                        ],
                    }
                },
                "results": results,
            }
        ],
    }
