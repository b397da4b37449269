"""Policy loading: every bad input is a PolicyError naming the key; good ones compile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from guardpool import PolicyError, Usage, Verdict
from guardpool.policy.loader import load_policy

KEY = {"name": "k", "deny_regex": ["AKIA[0-9A-Z]{16}"]}


@pytest.mark.parametrize(
    ("config", "key", "reason"),
    [
        ({"pool": {"wrkers": 2}}, "pool.wrkers", "unknown key 'wrkers'"),
        ({"pool": {"workers": "2"}}, "pool.workers", "Expected `int | null`, got `str`"),
        ({"pool": {"workers": 0}}, "pool.workers", "must be > 0"),
        ({"pool": {"preload": ["not a module"]}}, "pool.preload[0]", "is not a module name"),
        ({"guards": {"on_timeout": "maybe"}}, "guards.on_timeout", "Invalid enum value"),
        ({"limits": {"exe:llm:*": {"cost": 5.0}}}, 'limits."exe:llm:*".cost', "not a float"),
        ({"limits": {"exe:llm:*": {"cost": "5$"}}}, 'limits."exe:llm:*".cost', "bad money"),
        ({"limits": {"exe:llm:*": {"cost": "-$1"}}}, 'limits."exe:llm:*".cost', "bad money"),
        (
            {"limits": {"exe:llm:*": {"calls": 1, "window": "5x"}}},
            'limits."exe:llm:*".window',
            "bad duration",
        ),
        (
            {"limits": {"exe:llm:*": {"calls": 1, "scoep": "run"}}},
            'limits."exe:llm:*".scoep',
            "unknown key",
        ),
        ({"limits": {"exe:llm:*": {}}}, 'limits."exe:llm:*"', "at least one of"),
        ({"limits": {"exe:llm:*": {"calls": -1}}}, 'limits."exe:llm:*".calls', "must be >= 0"),
        ({"limits": {"exe llm": {"calls": 1}}}, 'limits."exe llm"', "bad label pattern"),
        ({"limits": {"x": {"calls": 1, "warn_at": 1.5}}}, 'limits."x".warn_at', "fraction"),
        ({"limits": {"x": {"dimensions": {"Rows": 1}}}}, 'limits."x".dimensions', "snake_case"),
        ({"prices": {"x": {}}}, 'prices."x"', "needs input_per_mtok"),
        ({"estimates": {"x": {"cost": "abc"}}}, 'estimates."x".cost', "bad money"),
        ({"guard": [KEY, KEY]}, "guard[1].name", "duplicate guard name"),
        ({"guard": [{"name": "a"}]}, "guard[0]", "needs deny_regex, require_regex or call"),
        (
            {"guard": [{"name": "a", "deny_regex": ["x"], "call": "os:getcwd"}]},
            "guard[0].call",
            "not both",
        ),
        (
            {"guard": [{"name": "a", "deny_regex": ["ok", "(a)\\1"]}]},
            "guard[0].deny_regex[1]",
            "no backreferences",
        ),
        (
            {"guard": [{"name": "a", "require_regex": ["(?=x)"]}]},
            "guard[0].require_regex[0]",
            "no lookahead",
        ),
        ({"guard": [{"name": "a", "deny_regex": ["end\\Z"]}]}, "guard[0].deny_regex[0]", "'\\z'"),
        (
            {"guard": [{"name": "a", "deny_regex": ["a{1001}"]}]},
            "guard[0].deny_regex[0]",
            "at most 1000 repetitions",
        ),
        (
            {"guard": [{"name": "a", "call": "no_such_module:f"}]},
            "guard[0].call",
            "cannot import module",
        ),
        (
            {"guard": [{"name": "a", "call": "os:no_such_function"}]},
            "guard[0].call",
            "has no attribute",
        ),
        ({"guard": [{"name": "a", "call": "os:sep"}]}, "guard[0].call", "is not callable"),
        (
            {
                "guard": [
                    {"name": "a", "call": "os:getcwd", "privileged": True, "on_timeout": "allow"}
                ]
            },
            "guard[0].on_timeout",
            "never fail open",
        ),
        (
            {
                "guards": {"on_error": "allow"},
                "guard": [{"name": "a", "call": "os:getcwd", "privileged": True}],
            },
            "guard[0].on_error",
            "never fail open",
        ),
        (
            {"guard": [{"name": "a", "ops": ["op::x"], "call": "os:getcwd"}]},
            "guard[0].ops[0]",
            "bad label pattern",
        ),
        (
            {"guard": [{"name": "a", "phase": "during", "call": "os:getcwd"}]},
            "guard[0].phase",
            "Invalid enum value",
        ),
        ({"store": {"backend": "redis"}}, "store.url", "needs url"),
    ],
)
def test_every_bad_config_names_its_key(config: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(config)
    assert err.value.key == key
    assert reason in err.value.reason


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PolicyError, match="no such file"):
        load_policy(missing)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[pool\nworkers = 2\n")
    with pytest.raises(PolicyError) as err:
        load_policy(bad)
    assert str(err.value).startswith(str(bad)) and "invalid TOML" in err.value.reason
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# caf\xe9\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(latin)
    typo = tmp_path / "typo.toml"
    typo.write_text('[limits."exe:llm:*"]\ncost = "five dollars"\n')
    with pytest.raises(PolicyError) as err:
        load_policy(typo)
    assert str(err.value) == (
        f'{typo}: limits."exe:llm:*".cost: bad money \'five dollars\': expected "$5.00" or "5.00"'
    )


def test_toml_json_and_dict_load_the_same_policy(tmp_path: Path) -> None:
    cfg = {
        "guard": [KEY],
        "limits": {"exe:llm:*": {"calls": 3, "cost": "$1.50", "window": "1h"}},
        "store": {"path": str(tmp_path / "g.db")},
        "audit": {"path": str(tmp_path / "g.db")},
    }
    (tmp_path / "p.json").write_text(json.dumps(cfg))
    (tmp_path / "p.toml").write_text(
        f"[[guard]]\nname = \"k\"\ndeny_regex = ['AKIA[0-9A-Z]{{16}}']\n"
        f'[limits."exe:llm:*"]\ncalls = 3\ncost = "$1.50"\nwindow = "1h"\n'
        f'[store]\npath = "{tmp_path / "g.db"}"\n[audit]\npath = "{tmp_path / "g.db"}"\n'
    )
    digests = {load_policy(s).digest for s in (cfg, tmp_path / "p.json", tmp_path / "p.toml")}
    assert len(digests) == 1
    (limit,) = load_policy(cfg).limits
    assert limit.dimensions == {"calls": 3, "cost": 1_500_000}
    assert limit.window_ms == 3_600_000


def test_relative_paths_resolve_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('[store]\npath = "budgets.db"\n')
    assert load_policy(tmp_path / "p.toml").config.store.path == str(tmp_path / "budgets.db")


def test_examples_policy_loads() -> None:
    policy = load_policy(Path(__file__).parent.parent / "examples" / "guardpool.toml")
    assert "shell" in policy.guards and policy.guards["shell"].spec.privileged
    assert policy.guards["toxicity"].spec.on_timeout == "allow"
    assert policy.guards["no-cloud-keys"].spec.timeout_ms == 500  # the [guards] default


def test_regex_banks_deny_and_require() -> None:
    policy = load_policy(
        {
            "guard": [
                {"name": "deny", "deny_regex": ["secret", "AKIA[0-9A-Z]{16}"], "reason": "leak"},
                {"name": "need-ticket", "require_regex": ["[A-Z]+-[0-9]+"]},
            ]
        }
    )
    deny, need = policy.guards["deny"], policy.guards["need-ticket"]
    assert deny.evaluate("a secret", None) == Verdict.deny("leak")  # type: ignore[arg-type]
    assert deny.evaluate(b"fine", None) == Verdict.allow()  # type: ignore[arg-type]
    assert deny.evaluate({"k": "AKIAABCDEFGHIJKLMNOP"}, None).action == "deny"  # type: ignore[arg-type, attr-defined]
    assert need.evaluate("fix ABC-12", None) == Verdict.allow()  # type: ignore[arg-type]
    assert "no require_regex matched" in need.evaluate("no ticket", None).reason  # type: ignore[arg-type, attr-defined]
    # hostile text: lone surrogates and invalid UTF-8 are scanned, not errors
    assert deny.evaluate("\ud800 secret", None).action == "deny"  # type: ignore[arg-type, attr-defined]
    assert deny.evaluate(b"\xff\xfe secret", None).action == "deny"  # type: ignore[arg-type, attr-defined]


def test_most_specific_estimate_and_price_win() -> None:
    policy = load_policy(
        {
            "estimates": {"exe:llm:*": {"tokens": 4000}, "exe:llm:gpt-4o": {"tokens": 100}},
            "prices": {
                "exe:llm:*": {"output_per_mtok": "$1.00"},
                "exe:llm:gpt-4o": {"input_per_mtok": "$2.50", "output_per_mtok": "$10.00"},
            },
        }
    )
    assert policy.estimate_for(["exe:llm:gpt-4o"]) == Usage(tokens=100)
    assert policy.estimate_for(["exe:llm:claude"]) == Usage(tokens=4000)
    assert policy.estimate_for(["op:cmd:ls"]) is None
    price = policy.price_for(["exe:llm:gpt-4o"])
    assert price is not None
    assert price.cost_micros(Usage(input_tokens=1000, output_tokens=1000)) == 12_500
    assert price.cost_micros(Usage(tokens=1000)) == 10_000  # all at the output rate
    assert price.cost_micros(Usage()) is None
