"""Policy loading: every bad input is a PolicyError naming the key; good ones compile."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from guardpool import PolicyError, Usage, Verdict
from guardpool.policy.config import Config, LimitSpec, PoolConfig
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
        (
            {"limits": {"x": {"dimensions": {"Rows": 1}}}},
            'limits."x".dimensions.Rows',
            "snake_case",
        ),
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
        ({"limits": {"x": {"calls": 1, "warn_at": 0}}}, 'limits."x".warn_at', "0 < warn_at"),
        ({"limits": {"x": {"calls": 1, "margin": -0.1}}}, 'limits."x".margin', "0 <= margin"),
        (
            {"limits": {"x": {"calls": 1, "window": "60"}}},
            'limits."x".window',
            'like "250ms", "60s", "5m", "1h" or "24h" or "run"',
        ),
        (
            {"limits": {"x": {"calls": 1, "scope": "team"}}},
            'limits."x".scope',
            "Invalid enum value 'team'",
        ),
        ({"limits": {"x": {"calls": 1.5}}}, 'limits."x".calls', "got `float`"),
        ({"limits": {"x": {"dimensions": {"rows": -1}}}}, 'limits."x".dimensions.rows', ">= 0"),
        (
            {"limits": {"x": {"dimensions": {"cost": 1}}}},
            'limits."x".dimensions.cost',
            "not one of",
        ),
        ({"prices": {"x": {"per_call": 0.01}}}, 'prices."x".per_call', "not a float"),
        ({"prices": {"x": {"input_per_mtok": "$-2"}}}, 'prices."x".input_per_mtok', "bad money"),
        ({"prices": {"a b": {"per_call": "$1"}}}, 'prices."a b"', "bad label pattern"),
        ({"estimates": {"x": {"tokens": -5}}}, 'estimates."x".tokens', "must be >= 0"),
        (
            {"estimates": {"x": {"dimensions": {"Rows": 1}}}},
            'estimates."x".dimensions.Rows',
            "snake",
        ),
        ({"estimates": {"x": {"tokenz": 5}}}, 'estimates."x".tokenz', "unknown key 'tokenz'"),
        (
            {"guard": [{"name": "a", "call": "os:getcwd", "timeout_ms": 0}]},
            "guard[0].timeout_ms",
            "> 0",
        ),
        ({"guard": [{"name": " ", "call": "os:getcwd"}]}, "guard[0].name", "needs a name"),
        ({"guard": [{"name": "a", "call": "os.getcwd"}]}, "guard[0].call", "'module:function'"),
        (
            {"guard": [{"name": "a", "call": "os:getcwd", "ops": []}]},
            "guard[0].ops",
            "at least one",
        ),
        ({"guard": [{"call": "os:getcwd"}]}, "guard[0]", "missing required field `name`"),
        ({"guard": {"name": "a"}}, "guard", "Expected `array`, got `object`"),
        ({"guards": {"regex_max_mem": 0}}, "guards.regex_max_mem", "> 0"),
        ({"store": {"op_timeout_ms": -1}}, "store.op_timeout_ms", "> 0"),
        ({"store": {"backend": "mongodb"}}, "store.backend", "Invalid enum value"),
        ({"store": {"backend": "postgres"}}, "store.url", "needs url"),
        (
            {"store": {"backend": "postgres", "url": "postgresql://u:pw@h/db"}},
            "store.url",
            "PGPASSWORD",
        ),
        (
            {"store": {"backend": "postgres", "url": "postgresql://h/db", "key_prefix": "A-b"}},
            "store.key_prefix",
            "schema name",
        ),
        ({"audit": {"capture_input": "yes"}}, "audit.capture_input", "Expected `bool`"),
        ({"audit": {"backend": "postgres"}}, "audit.url", "needs url"),
        (
            {"audit": {"backend": "postgres", "url": "postgresql://h/d", "schema": "1x"}},
            "audit.schema",
            "schema name",
        ),
        ({"audit": {"op_timeout_ms": 0}}, "audit.op_timeout_ms", "> 0"),
        ({"pool": {"hardening": "paranoid"}}, "pool.hardening", "Invalid enum value"),
        ({"pool": {"max_input_bytes": -1}}, "pool.max_input_bytes", "> 0"),
        ({"pool": {"idle_poll_us": -1}}, "pool.idle_poll_us", ">= 0"),
        ({"pool": {"idle_poll_us": 1001}}, "pool.idle_poll_us", "at most 1_000"),
        ({"pool": {"idle_poll_us": True}}, "pool.idle_poll_us", "Expected `int | null`"),
        ({"pool": {"idle_poll_us": 2.5}}, "pool.idle_poll_us", "Expected `int | null`"),
        ({"colour": "blue"}, "colour", "unknown key 'colour'"),
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
        f'{typo}: limits."exe:llm:*".cost: bad money \'five dollars\': expected "$5.00" or "5.00" '
        "(at most 10 digits before the point and 96 after)"
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
    assert policy.match(["exe:llm:gpt-4o"]).estimate == Usage(tokens=100)
    assert policy.match(["exe:llm:claude"]).estimate == Usage(tokens=4000)
    assert policy.match(["op:cmd:ls"]).estimate is None
    price = policy.match(["exe:llm:gpt-4o"]).price
    assert price is not None
    assert price.cost_micros(Usage(input_tokens=1000, output_tokens=1000)) == 12_500
    assert price.cost_micros(Usage(tokens=1000)) == 10_000  # all at the output rate
    assert price.cost_micros(Usage()) is None


def test_json_errors_carry_line_and_duplicate_keys_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "pool": {"workers": 2,}\n}\n')
    with pytest.raises(PolicyError) as err:
        load_policy(broken)
    assert err.value.file == str(broken) and "line 2" in err.value.reason
    twice = tmp_path / "twice.json"
    twice.write_text('{"limits": {"x": {"calls": 1, "calls": 100}}}')
    with pytest.raises(PolicyError, match="duplicate key 'calls'"):
        load_policy(twice)
    top = tmp_path / "list.json"
    top.write_text("[1, 2]")
    with pytest.raises(PolicyError, match="top level must be a table"):
        load_policy(top)


def test_toml_errors_carry_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pool]\nworkers = 2\nworkers = 3\n")
    with pytest.raises(PolicyError) as err:
        load_policy(bad)
    assert err.value.file == str(bad) and "line 3" in err.value.reason


def test_file_errors_keep_the_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text("[[guard]]\nname = \"a\"\ndeny_regex = ['ok', '(a)\\1']\n")
    with pytest.raises(PolicyError) as err:
        load_policy(bad)
    assert str(err.value).startswith(f"{bad}: guard[0].deny_regex[1]: guard 'a': RE2 rejects")


def test_a_hand_built_config_is_checked_like_a_file() -> None:
    config = Config(pool=PoolConfig(workers="2"))  # type: ignore[arg-type]
    with pytest.raises(PolicyError) as err:
        load_policy(config)
    assert err.value.key == "pool.workers" and "got `str`" in err.value.reason
    good = load_policy(Config(limits={"x": LimitSpec(calls=1)}))
    assert good.source == "<config>" and good.limits[0].dimensions == {"calls": 1}


def test_limits_compile_to_integer_units() -> None:
    policy = load_policy(
        {
            "limits": {
                "exe:llm:*": {"calls": 100, "tokens": 200_000, "cost": "$5.00", "wall_ms": 600_000},
                "op:cmd:*": {"calls": 200, "window": "24h", "scope": "principal"},
                "db:*": {"dimensions": {"rows": 1000}, "enforcement": "post-hoc"},
                "whole": {"cost": 3, "margin": 0, "warn_at": None, "on_exceed": "warn"},
            }
        }
    )
    llm, cmd, db, whole = policy.limits
    assert llm.dimensions == {
        "calls": 100,
        "tokens": 200_000,
        "wall_ms": 600_000,
        "cost": 5_000_000,
    }
    assert (llm.window, llm.window_ms, llm.scope, llm.warn_at, llm.margin) == (
        "run",
        0,
        "run",
        0.8,
        0.05,
    )
    assert (cmd.window_ms, cmd.scope) == (86_400_000, "principal")
    assert db.dimensions == {"rows": 1000} and db.enforcement == "post-hoc"
    # an integer cost is whole currency units; margin 0 and warn_at None switch those off
    assert whole.dimensions == {"cost": 3_000_000}
    assert (whole.margin, whole.warn_at, whole.on_exceed) == (0, None, "warn")
    assert all(isinstance(v, int) for lim in policy.limits for v in lim.dimensions.values())


def test_limits_and_guards_are_selected_by_label_in_config_order() -> None:
    policy = load_policy(
        {
            "guard": [
                {"name": "all", "deny_regex": ["x"]},
                {"name": "cmd", "ops": ["op:cmd:*"], "call": "os:getcwd"},
                {"name": "llm-out", "phase": "after", "ops": ["exe:llm"], "deny_regex": ["y"]},
                {"name": "git", "ops": ["op:net:w", "op:cmd:git"], "deny_regex": ["z"]},
            ],
            "limits": {
                "op:cmd:*": {"calls": 1},
                "op:cmd:git:push": {"calls": 2},
                "*": {"calls": 9},
            },
        }
    )
    assert list(policy.guards) == ["all", "cmd", "llm-out", "git"]
    names = [g.spec.name for g in policy.match(["op:cmd:git:push"]).before]
    assert names == ["all", "cmd", "git"]
    assert [g.spec.name for g in policy.match(["exe:llm:gpt-4o"]).after] == ["llm-out"]
    assert [g.spec.name for g in policy.match(["op:net:w"]).before] == ["all", "git"]
    assert [lim.pattern for lim in policy.match(["op:cmd:git:push"]).limits] == [
        "op:cmd:*",
        "op:cmd:git:push",
        "*",
    ]
    assert [lim.pattern for lim in policy.match(["exe:llm:x"]).limits] == ["*"]
    assert policy.guards["cmd"].kind == "callable" and policy.guards["all"].kind == "regex"


def test_guard_specs_resolve_their_defaults() -> None:
    policy = load_policy(
        {
            "guards": {"timeout_ms": 700, "on_timeout": "allow", "on_error": "allow"},
            "guard": [
                {"name": "advisory", "call": "os:getcwd"},
                {
                    "name": "strict",
                    "call": "os:getcwd",
                    "timeout_ms": 50,
                    "on_timeout": "deny",
                    "on_error": "deny",
                    "privileged": True,
                },
            ],
        }
    )
    advisory, strict = policy.guards["advisory"].spec, policy.guards["strict"].spec
    assert (advisory.timeout_ms, advisory.on_timeout, advisory.on_error) == (700, "allow", "allow")
    assert (strict.timeout_ms, strict.on_timeout, strict.on_error) == (50, "deny", "deny")


def test_regex_guard_input_encoding_and_default_reasons() -> None:
    policy = load_policy(
        {
            "guard": [
                {"name": "keys", "deny_regex": ["nothing", "AKIA[0-9A-Z]{16}"]},
                {"name": "shape", "require_regex": ['^\\{"a":"x","b":\\[1,2\\]\\}$']},
            ]
        }
    )
    keys, shape = policy.guards["keys"], policy.guards["shape"]
    ctx: Any = None  # regex guards never touch the context
    assert keys.evaluate("id AKIAABCDEFGHIJKLMNOP", ctx) == Verdict.deny(
        "guard keys: deny_regex[1] matched"
    )
    # anything that is not str/bytes is matched as canonical JSON: sorted keys, no spaces
    assert shape.evaluate({"b": [1, 2], "a": "x"}, ctx) == Verdict.allow()
    assert shape.evaluate({"a": "x"}, ctx) == Verdict.deny("guard shape: no require_regex matched")
    assert keys.evaluate(["AKIAABCDEFGHIJKLMNOP"], ctx).action == "deny"  # type: ignore[attr-defined]
    assert keys.evaluate("AKIA" + "é" * 16, ctx) == Verdict.allow()


def test_callables_import_from_beside_the_policy_file(tmp_path: Path) -> None:
    module = f"local_guards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "def deny_all(value, ctx):\n    return False\n\nNOT_CALLABLE = 3\n"
    )
    (tmp_path / "p.toml").write_text(f'[[guard]]\nname = "g"\ncall = "{module}:deny_all"\n')
    before = list(sys.path)
    policy = load_policy(tmp_path / "p.toml")
    assert sys.path == before  # found through the policy's own import path
    assert policy.import_path == (str(tmp_path), str(tmp_path.parent))
    assert policy.guards["g"].evaluate("x", None) is False  # type: ignore[arg-type]
    (tmp_path / "q.toml").write_text(f'[[guard]]\nname = "g"\ncall = "{module}:NOT_CALLABLE"\n')
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path / "q.toml")
    assert (err.value.file, err.value.key) == (str(tmp_path / "q.toml"), "guard[0].call")
    assert "is not callable" in err.value.reason


def test_a_dict_policy_does_not_touch_sys_path() -> None:
    before = list(sys.path)
    load_policy({"guard": [{"name": "g", "call": "os:getcwd"}]})
    assert sys.path == before


def test_a_module_that_fails_on_import_is_a_policy_error(tmp_path: Path) -> None:
    module = f"exits_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "p.toml").write_text(f'[[guard]]\nname = "g"\ncall = "{module}:f"\n')
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path / "p.toml")
    assert err.value.key == "guard[0].call" and "cannot import module" in err.value.reason


def test_the_digest_follows_content_not_key_order() -> None:
    a = {"limits": {"x": {"calls": 1}, "y": {"tokens": 2}}}
    b = {"limits": {"y": {"tokens": 2}, "x": {"calls": 1}}}
    c = {"limits": {"x": {"calls": 2}, "y": {"tokens": 2}}}
    digest = load_policy(a).digest
    assert len(digest) == 64 and digest == load_policy(b).digest != load_policy(c).digest


def test_prices_cost_from_tokens() -> None:
    policy = load_policy(
        {
            "prices": {
                "exe:llm:in-only": {"input_per_mtok": "$3.00"},
                "exe:tool:search": {"per_call": "$0.005"},
                "exe:llm:mixed": {
                    "input_per_mtok": "$0.15",
                    "output_per_mtok": "$0.60",
                    "per_call": "$0.001",
                },
            }
        }
    )
    in_only, search, mixed = (
        policy.match([label]).price
        for label in ("exe:llm:in-only", "exe:tool:search", "exe:llm:mixed")
    )
    assert in_only is not None and search is not None and mixed is not None
    # a missing output rate charges output tokens at the dearest known rate
    assert in_only.cost_micros(Usage(input_tokens=1000, output_tokens=1000)) == 6_000
    assert search.cost_micros(Usage()) == 5_000  # per call, no tokens needed
    assert search.cost_micros(Usage(tokens=10)) == 5_000  # a per-call price ignores tokens
    assert in_only.cost_micros(Usage()) is None  # nothing to price
    # 1 token at $0.15/Mtok is 0.15 micro-units: rounded up to 1, never down to 0
    assert mixed.cost_micros(Usage(input_tokens=1)) == 1_000 + 1
    assert mixed.cost_micros(Usage(tokens=1_000_000)) == 1_000 + 600_000
    assert policy.match(["exe:llm:other"]).price is None


def test_match_is_computed_once_per_label_set_and_refuses_bad_labels() -> None:
    policy = load_policy(
        {
            "guard": [{"name": "g", "ops": ["op:cmd:*"], "deny_regex": ["x"]}],
            "limits": {"op:cmd:*": {"calls": 3}},
        }
    )
    first = policy.match(("op:cmd:ls",))
    assert policy.match(["op:cmd:ls"]) is first  # a list hits the tuple's entry
    assert [g.spec.name for g in first.before] == ["g"] and first.after == ()
    assert policy.match(("op:net:w",)).limits == ()
    with pytest.raises(ValueError, match="label"):
        policy.match(("op::bad",))
    with pytest.raises(ValueError, match="label"):
        policy.match(("op::bad",))  # not cached: refused again


def test_the_match_cache_is_bounded() -> None:
    from guardpool.policy import runtime

    policy = load_policy({"limits": {"*": {"calls": 3}}})
    for i in range(runtime._MATCH_CACHE + 10):
        policy.match((f"op:n{i}",))
    assert len(policy._matches) == runtime._MATCH_CACHE
    assert ("op:n0",) not in policy._matches  # the oldest went first
