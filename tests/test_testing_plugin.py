"""The pytest plugin, exercised the way a user would: pytest run on a small sample project."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

GUARDS = '''
import re

from guardpool import Verdict

WORDS = re.compile(r"^(\\w+\\s?)*$")  # catastrophic backtracking on "aaaa...!"


def only_words(value, ctx):
    return WORDS.match(str(value)) is not None


def safe_words(value, ctx):
    return ctx.regex(r"^[\\w ]*$").search(str(value)) is not None


def quadratic(value, ctx):
    text = str(value)
    seen = 0
    for i in range(len(text)):
        seen += text.count(text[i], 0, i)  # a scan of everything before: O(n^2)
    return seen >= 0


def no_sql_drop(value, ctx):
    if "drop table" in str(value).lower():
        return Verdict.deny("destructive SQL")
    return True
'''

POLICY = '''
[pool]
workers = 1

[[guard]]
name = "keys"
deny_regex = ['AKIA[0-9A-Z]{16}']
reason = "credential"

[[guard]]
name = "sql"
ops = ["op:db:*"]
call = "sample_guards:no_sql_drop"

[limits."op:db:*"]
calls = 2
'''

TESTS = '''
import pytest
from hypothesis import HealthCheck, given, settings

from guardpool import Operation
from guardpool.testing import (
    GrowthError, GuardFuzzFailure, adversarial_texts, assert_linear_time, fuzz_guard,
)


def test_the_policy_denies_a_key(guardpool_run):
    decision = guardpool_run.check(Operation(labels=("exe:llm:x",), input="AKIAABCDEFGHIJKLMNOP"))
    assert decision.action == "deny" and "credential" in decision.reasons


@pytest.mark.parametrize("attempt", [1, 2])
def test_budgets_start_at_zero_in_every_test(guardpool_run, attempt):
    op = Operation(labels=("op:db:query",), input="select 1")
    assert guardpool_run.check(op).allowed
    assert guardpool_run.check(op).allowed
    assert not guardpool_run.check(op).allowed  # calls = 2


def test_the_callable_guard_runs_in_the_pool(guardpool_run):
    decision = guardpool_run.check(Operation(labels=("op:db:q",), input="DROP TABLE users"))
    assert decision.action == "deny" and decision.reasons == ("destructive SQL",)


def test_a_safe_guard_fuzzes_clean():
    fuzz_guard("sample_guards:safe_words", seconds=2)


def test_a_redos_guard_is_caught_with_a_minimised_reproducer():
    with pytest.raises(GuardFuzzFailure) as info:
        fuzz_guard("sample_guards:only_words", seconds=3, timeout_ms=200)
    (finding,) = info.value.findings
    assert finding.kind == "timeout" and len(finding.value) <= 64
    assert "minimised input" in str(info.value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adversarial_texts(pattern=r"^(\\w+\\s?)*$", max_repeat=2000))
def test_the_re2_bank_answers_any_hostile_text(guardpool_policy, text):
    verdict = guardpool_policy.guards["keys"].evaluate(text, None)
    assert verdict.action in ("allow", "deny")


def test_a_linear_guard_passes_the_growth_check():
    assert_linear_time("sample_guards:safe_words", lambda n: "word " * (n // 5))


def test_a_quadratic_guard_fails_the_growth_check():
    with pytest.raises(GrowthError, match="grows like n"):
        assert_linear_time("sample_guards:quadratic", lambda n: "ab" * (n // 2),
                           sizes=(8000, 16000, 32000, 64000), repeats=3)


def test_an_unguarded_redos_fails_the_test():
    fuzz_guard("sample_guards:only_words", seconds=2, timeout_ms=200)
'''


def test_the_plugin_serves_a_sample_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(sample_guards=GUARDS, test_sample=TESTS)
    pytester.makefile(".toml", policy=POLICY)
    pytester.makeini("[pytest]\nguardpool_policy = policy.toml\npythonpath = .\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(passed=9, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_an_unguarded_redos_fails_the_test*",
            "*GuardFuzzFailure: fuzzing sample_guards:only_words found 1 problem(s)*",
            "*timeout: killed at its deadline*",
            "*minimised input (*",
        ]
    )


def test_fixtures_without_a_policy_say_how_to_name_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(guardpool_enforcer):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*guardpool fixtures need a policy*"])
