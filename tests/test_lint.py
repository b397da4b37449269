"""ReDoS analysis and ``guardpool lint``, run as a user would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from guardpool.analysis.astscan import scan_source, scan_source_full
from guardpool.analysis.confirm import classify, confirm
from guardpool.analysis.redos import analyse, inspect

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [
        (r"(a+)+$", "exponential"),
        (r"(a*)*b", "exponential"),
        (r"^(\w+\s?)*$", "exponential"),
        (r"(a|aa)+$", "exponential"),
        (r"(,*,)*(,+)[ \t]", "exponential"),
        (r"\w+\d+$", "polynomial"),
        (r".*.*=", "polynomial"),
        # Overlaps hidden behind a group, an optional item or a literal (issue 17).
        (r"(\w+)(\d+)$", "polynomial"),
        (r"\s*#?\s*$", "polynomial"),
        (r"(.+?)\((.*)\)", "polynomial"),
    ],
)
def test_dangerous_shapes_are_found(pattern: str, kind: str) -> None:
    findings = analyse(pattern)
    assert findings and findings[0].kind == kind


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[a-z]+$",
        r"AKIA[0-9A-Z]{16}",
        r"(ab|cd)+$",
        r"(ab|a)*c",
        r"^(\d+)-(\d+)$",
        r"(a+)+",  # succeeds on every prefix: nothing to backtrack
        r"\s+$",  # quadratic only: left to the deadline
        r"\d+\s*\S+",
        r"(?:\d+-)+",
        r"\\\\|\\\"",
        # semver.org's reference regex: mandatory dots separate the repeats.
        r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
        r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
        r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
        r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$",
    ],
)
def test_safe_patterns_are_left_alone(pattern: str) -> None:
    assert analyse(pattern) == []


def test_the_call_style_decides() -> None:
    # Anchored by match, a*a*$ splits one run two ways: quadratic, not reported;
    # re.search adds a start position per character: cubic.
    assert analyse(r"a*a*$", call="match") == []
    assert analyse(r"a*a*$", call="search")[0].degree == 3
    assert analyse(r"a*a*$", call="findall")[0].degree == 3
    # Without an anchor (a+)+ always succeeds at once — except under fullmatch.
    assert analyse(r"(a+)+", call="search") == []
    assert analyse(r"(a+)+", call="fullmatch")[0].kind == "exponential"


def test_flags_are_understood() -> None:
    # 'a' and 'Aa' only overlap when case is ignored.
    assert analyse(r"(a|Aa)+$") == []
    assert analyse(r"(?i)(a|Aa)+$")[0].kind == "exponential"
    assert analyse(r"(a|Aa)+$", flags=re.IGNORECASE)[0].kind == "exponential"
    verbose = r"""(?x)
        ( \w+   # a word
          \s? )*  $"""
    assert analyse(verbose)[0].kind == "exponential"
    # \w is Unicode in str patterns, so 'éx' is two \w or one 'éx'; (?a) makes it ASCII.
    assert analyse(r"(\w|éx)+$")[0].kind == "exponential"
    assert analyse(r"(?a)(\w|éx)+$") == []


def test_approximations_are_said() -> None:
    report = inspect(r"(?=x)(a+)+$")
    assert report.findings and any("lookaround" in n for n in report.notes)
    report = inspect(r"(a+)\1(a+)b")
    assert any("backreference" in n for n in report.notes)
    assert inspect(r"x{2,1000}y").notes


def test_bad_and_huge_patterns_are_reported_not_raised() -> None:
    assert inspect("(unclosed").error.startswith("does not compile")
    huge = "(a|b)" * 5000
    report = inspect(huge)
    assert report.error == "too large to analyse" or report.findings == []


def test_the_attack_fails_the_attempts_that_do_the_work() -> None:
    for pattern in (r"(a+)+$", r"\s*#?\s*$", r"^(\w+\s?)*$", r"(x+x+)+y"):
        (first, *_rest) = analyse(pattern)
        text = first.attack(12)
        # Every attempt starting inside the pumped run fails (re.search may still
        # succeed later, e.g. \s*$ at the very end: too late to save the time).
        assert all(re.compile(pattern).match(text, i) is None for i in range(8)), pattern


def test_classify_growth() -> None:
    expo = [(n, 0.001 * 2 ** (n - 10)) for n in range(10, 16)]
    assert classify(expo) == ("exponential", 0)
    cubic = [(n, 1e-9 * n**3) for n in (256, 512, 1024, 2048)]
    assert classify(cubic) == ("polynomial", 3)
    linear = [(n, 1e-6 * n) for n in (4096, 8192, 16384, 32768)]
    assert classify(linear) == ("linear", 1)
    assert classify([]) == ("unknown", 0)


def test_an_exponential_finding_is_confirmed_against_real_re() -> None:
    (finding, *_) = analyse(r"(a+)+$")
    result = confirm(r"(a+)+$", finding.plan, exponential=True, deadline_s=3.0)
    assert result.confirmed and result.growth == "exponential", result.describe()
    assert result.attack.text(3).startswith("aa")


def test_a_polynomial_finding_is_confirmed_with_its_degree() -> None:
    # Degree 4 under re.search (three repeats and the scan): far enough from the
    # quadratic/cubic boundary that a loaded machine cannot blur it.
    (finding,) = analyse(r"\s*\s*#?\s*$")
    assert finding.degree == 4
    result = confirm(r"\s*\s*#?\s*$", finding.plan, deadline_s=3.0)
    assert result.confirmed and result.growth == "polynomial" and result.degree >= 3


@pytest.mark.parametrize(
    "pattern",
    [
        "(a+)+\x00$",  # NUL: once crashed the confirmer ("embedded null byte")
        "\ud800?(a+)+$",  # a lone surrogate
        b"(a+)+$",  # bytes
    ],
    ids=["nul", "surrogate", "bytes"],
)
def test_any_pattern_travels_to_the_confirmer(pattern: str | bytes) -> None:
    findings = analyse(pattern)
    assert findings
    result = confirm(pattern, findings[0].plan, exponential=findings[0].exponential)
    assert not result.error and result.confirmed, result.describe()


def test_a_huge_pattern_travels_to_the_confirmer() -> None:
    # 300 kB of literal text: far beyond what a command line carries.
    pattern = "(a+)+$|" + "x" * 300_000
    (finding, *_) = analyse(r"(a+)+$")
    result = confirm(pattern, finding.plan, exponential=True, deadline_s=4.0)
    assert not result.error and result.confirmed, result.describe()
    assert inspect(pattern).error == "too large to analyse"


def test_a_finding_the_real_engine_refutes_is_not_confirmed() -> None:
    # The lookahead (assumed to pass) actually fails at once on every 'a'.
    (finding, *_) = analyse(r"(?=x)(a+)+$")
    result = confirm(r"(?=x)(a+)+$", finding.plan, exponential=True, deadline_s=3.0)
    assert not result.confirmed and result.growth in ("linear", "unknown")


GUARDS = '''\
import functools
import re
import re as _re
from functools import partial
from re import search as find

PAT = r"^(\\w+\\s?)*$"
BASE = "a+"
NESTED = "(" + BASE + ")+$"
FSTR = f"({BASE})+$"
FLAGS = re.I | re.X
WORDS_RE = re.compile(PAT, FLAGS)
SAFE = "^[a-z]+$"


class Guard:
    DIGITS = re.compile(r"(\\d+)+$")

    def check(self, s):
        return self.DIGITS.fullmatch(s)


def helper(rx, s):
    return rx.match(s)


def use(s):
    helper(WORDS_RE, s)
    local = NESTED
    re.findall(local, s)
    re.sub(FSTR, "", s)
    re.split(SAFE, s)
    find(r"\\s*#?\\s*$", s)
    p = partial(re.search, NESTED)
    q = functools.partial(_re.fullmatch, "(b|bb)+")
    return p, q
'''


def test_the_scan_follows_patterns_into_every_call_style() -> None:
    uses = scan_source(GUARDS, "g.py")
    got = {(u.line, u.col, u.call, u.pattern, u.method) for u in uses}
    assert (12, 12, "re.compile", r"^(\w+\s?)*$", "match") in got  # via helper(WORDS_RE)
    assert (17, 14, "re.compile", r"(\d+)+$", "fullmatch") in got  # self.DIGITS
    assert (30, 5, "re.findall", "(a+)+$", "findall") in got  # local = NESTED
    assert (31, 5, "re.sub", "(a+)+$", "sub") in got  # f-string of a constant
    assert (32, 5, "re.split", "^[a-z]+$", "split") in got
    assert (33, 5, "find", r"\s*#?\s*$", "search") in got  # from re import search as find
    assert (34, 9, "partial(re.search)", "(a+)+$", "search") in got
    assert (35, 9, "partial(_re.fullmatch)", "(b|bb)+", "fullmatch") in got
    flags = {u.flags for u in uses if u.pattern == r"^(\w+\s?)*$"}
    assert flags == {re.I | re.X}
    via = {u.via for u in uses if u.line == 30}
    assert via == {"pattern from local"}


def test_a_module_that_does_not_parse_is_a_problem_not_an_exception() -> None:
    uses, problems = scan_source_full("def f(:\n", "broken.py")
    assert uses == [] and problems[0].line == 1 and "syntax error" in problems[0].message


def lint(config: Path, *extra: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardpool", "lint", "--config", str(config), *extra],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_lint_flags_the_planted_guard_module() -> None:
    out = lint(ROOT / "tests" / "planted" / "policy.toml")
    assert out.returncode == 1, out.stderr
    assert "bad_guards.py:8:10: GP101 danger" in out.stdout
    assert "bad_guards.py:16:12: GP101 danger" in out.stdout
    assert "confirmed, exponential" in out.stdout and "hint:" in out.stdout
    assert "bad_guards.py:20" not in out.stdout  # the safe pattern


def _policy(tmp_path: Path, module: str, source: str, extra: str = "") -> Path:
    (tmp_path / f"{module}.py").write_text(source)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[[guard]]\nname = "g"\nops = ["*"]\ncall = "{module}:check"\n{extra}'
    )
    return policy


def test_lint_follows_a_module_constant_with_its_line(tmp_path: Path) -> None:
    source = textwrap.dedent(
        '''\
        import re

        PAT = r"^(\\w+\\s?)*$"
        NUL = "(a+)+\\x00$"


        def check(value, ctx):
            return re.match(PAT, str(value)) is None and not re.search(NUL, str(value))
        '''
    )
    policy = _policy(tmp_path, "constguard", source)
    out = lint(policy, "--json", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    dangers = [i for i in report["issues"] if i["level"] == "danger"]
    assert {d["where"] for d in dangers} == {"constguard.py:8:12", "constguard.py:8:54"}
    assert all(d["code"] == "GP101" and d["hint"] for d in dangers)
    assert any(d["details"]["pattern"] == repr("(a+)+\x00$") for d in dangers)
    assert {d["details"].get("via") for d in dangers} == {"pattern from PAT", "pattern from NUL"}


def test_a_suspected_finding_is_reported_apart_and_does_not_fail(tmp_path: Path) -> None:
    source = "import re\n\ndef check(value, ctx):\n    return re.search(r'(?=x)(a+)+$', value)\n"
    policy = _policy(tmp_path, "lookguard", source)
    out = lint(policy, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "-- suspected" in out.stdout and "lookguard.py:4:12: GP103 suspected" in out.stdout
    static = lint(policy, "--no-confirm", cwd=tmp_path)
    assert static.returncode == 1 and "GP101 danger" in static.stdout


def test_a_broken_policy_reports_every_problem_in_one_json_document(tmp_path: Path) -> None:
    (tmp_path / "redosguard.py").write_text(
        "import re\nW = re.compile(r'(a|aa)+$')\ndef check(v, ctx):\n"
        "    return W.match(v) and re.search('(unclosed', v)\n"
    )
    policy = tmp_path / "bad.toml"
    policy.write_text(
        '[[guard]]\nname = "x"\nops = ["*"]\ndeny_regex = ["(?=x)", "ok", "a\\\\1"]\n'
        '[[guard]]\nname = "y"\nops = ["*"]\ncall = "redosguard:check"\n'
    )
    out = lint(policy, "--json", cwd=tmp_path)
    assert out.returncode == 2
    report = json.loads(out.stdout)
    codes = [(i["code"], i["where"]) for i in report["issues"]]
    assert ("GP001", f"{policy}: guard[0].deny_regex[0]") in codes
    assert ("GP002", f"{policy}: guard[0].deny_regex[2]") in codes
    assert ("GP101", "redosguard.py:2:5") in codes
    assert ("GP104", "redosguard.py:4:27") in codes
    assert report["errors"] == 2 and "Traceback" not in out.stderr


def test_lint_on_a_broken_policy_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[guard]]\nname = "x"\ndeny_regex = ["(?=x)"]\n')
    out = lint(bad)
    assert out.returncode == 2
    assert "guard[0].deny_regex[0]" in out.stderr and "Traceback" not in out.stderr
    assert "GP001" in out.stdout


def test_json_on_a_missing_file_and_on_unparsable_toml(tmp_path: Path) -> None:
    out = lint(tmp_path / "nope.toml", "--json")
    assert out.returncode == 2 and json.loads(out.stdout)["issues"][0]["code"] == "GP001"
    bad = tmp_path / "bad.toml"
    bad.write_text("[[guard]\n")
    out = lint(bad, "--json")
    assert out.returncode == 2 and "invalid TOML" in json.loads(out.stdout)["issues"][0]["message"]


def test_one_module_that_cannot_be_scanned_does_not_lose_the_others(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(
        "import re\ndef check(v, ctx):\n    return re.fullmatch(r'(\\d+)+', v)\n"
    )
    (tmp_path / "native.py").write_text("def check(v, ctx):\n    return True\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[[guard]]\nname = "a"\nops = ["*"]\ncall = "good:check"\n'
        '[[guard]]\nname = "b"\nops = ["*"]\ncall = "native:check"\n'
    )
    # The module is importable for the loader but its source is gone for the scan.
    import compileall

    compileall.compile_file(str(tmp_path / "native.py"), quiet=1, legacy=True)
    (tmp_path / "native.py").unlink()
    out = lint(policy, "--json", cwd=tmp_path)
    report = json.loads(out.stdout)
    codes = {i["code"] for i in report["issues"]}
    assert out.returncode == 1 and {"GP101", "GP105"} <= codes, out.stdout


def test_lint_passes_the_example_policy_with_warnings_only() -> None:
    out = lint(ROOT / "examples" / "guardpool.toml", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["dangers"] == 0
    assert any(i["code"] == "GP201" and "fails open" in i["message"] for i in report["issues"])


def test_lint_shows_the_machine_advice_under_its_rule_codes(tmp_path: Path) -> None:
    import os
    import tomllib

    from guardpool.policy.machine import advice
    from guardpool.policy.source import decode_config

    cores = os.cpu_count() or 1
    extra = (
        f"timeout_ms = 900\n[pool]\nworkers = {4 * cores + 1}\njob_cpu_ms = 500\n"
        "job_timeout_ms = 800\n"
    )
    policy = _policy(tmp_path, "okguard", "def check(value, ctx):\n    return True\n", extra)
    out = lint(policy, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr  # advice never fails lint
    found = {(i["code"], i["level"], i["where"]) for i in json.loads(out.stdout)["issues"]}
    assert ("GP205", "warning", "pool.workers") in found
    assert ("GP206", "warning", "guard[0].timeout_ms") in found
    assert ("GP207", "info", "guard[0].timeout_ms") in found
    # One place computes the advice: lint shows exactly what advice() says.
    cfg = decode_config(tomllib.loads(policy.read_text()), str(policy))
    shown = {(c, w) for c, _, w in found if c in ("GP205", "GP206", "GP207")}
    assert {(a.code, a.key) for a in advice(cfg)} == shown


def test_sane_settings_get_no_advice(tmp_path: Path) -> None:
    extra = "timeout_ms = 200\n[pool]\nworkers = 1\njob_cpu_ms = 500\njob_timeout_ms = 800\n"
    policy = _policy(tmp_path, "okguard2", "def check(value, ctx):\n    return True\n", extra)
    out = lint(policy, "--json", cwd=tmp_path)
    codes = {i["code"] for i in json.loads(out.stdout)["issues"]}
    assert out.returncode == 0 and not codes & {"GP205", "GP206", "GP207"}, out.stdout
