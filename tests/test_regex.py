"""RE2: rejections with rewrite hints, one-pass banks, linear time, semantic differences."""

from __future__ import annotations

import re
import time

import pytest

from guardpool import PolicyError
from guardpool.policy.loader import load_policy
from guardpool.policy.regex import RegexBank, compile_pattern, re_semantic_warnings


@pytest.mark.parametrize(
    ("pattern", "reason", "hint"),
    [
        (r"end\Z", r"invalid escape sequence: \Z", r"'\z'"),
        ("(?=x)", "invalid perl operator: (?=", "no lookaround"),
        ("a(?!b)", "invalid perl operator: (?!", "split the check into deny_regex and require"),
        ("(?<=x)y", "invalid perl operator: (?<=", "no lookaround"),
        ("(?<!x)y", "invalid perl operator: (?<!", "no lookaround"),
        (r"(a)\1", r"invalid escape sequence: \1", "no backreferences"),
        ("(?P<n>a)(?P=n)", "invalid perl operator", "no backreferences"),
        ("(?>ab)", "invalid perl operator: (?>", "atomic group"),
        ("a*+", "bad repetition operator: *+", "possessive '+' ('*+' -> '*')"),
        ("a++", "bad repetition operator: ++", "never backtracks"),
        ("a{2,5}+", "bad repetition operator", "possessive"),
        ("a{1001}", "invalid repetition size: {1001}", "at most 1000 repetitions"),
        ("((a{100}){100}){100}", "invalid repetition size", "nested repeats multiplied"),
        ("a{5,2}", "invalid repetition size: {5,2}", "must not be below the lower one"),
        (r"(\pL{100}){10}", "pattern too large", "regex_max_mem"),
    ],
)
def test_rejections_carry_re2s_reason_and_a_hint(pattern: str, reason: str, hint: str) -> None:
    with pytest.raises(ValueError) as err:
        compile_pattern(pattern)
    text = str(err.value)
    assert text.startswith(f"RE2 rejects {pattern!r}: ")
    assert reason in text
    assert "(hint: " in text and hint in text


def test_a_rejection_without_a_known_rewrite_has_no_hint() -> None:
    with pytest.raises(ValueError) as err:
        compile_pattern("(")
    assert str(err.value) == "RE2 rejects '(': missing ): ("


def test_a_rejection_stays_on_one_line_when_the_pattern_holds_a_newline() -> None:
    # Found by test_config_fuzz: RE2 quotes the fragment raw, newline and all.
    with pytest.raises(ValueError) as err:
        compile_pattern(")\n")
    assert str(err.value) == "RE2 rejects ')\\n': unexpected ): )\\n"


def test_policy_errors_name_the_guard_the_bank_and_the_index() -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(
            {
                "guard": [
                    {"name": "fine", "deny_regex": ["ok"]},
                    {"name": "keys", "deny_regex": ["AKIA", "x"], "require_regex": ["a", "b(?=c)"]},
                ]
            }
        )
    assert err.value.key == "guard[1].require_regex[1]"
    assert err.value.reason.startswith("guard 'keys': RE2 rejects 'b(?=c)'")
    assert "no lookaround" in err.value.reason


def test_regex_max_mem_bounds_each_pattern_and_the_bank() -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(
            {
                "guards": {"regex_max_mem": 1 << 16},
                "guard": [{"name": "big", "deny_regex": ["(?:abcdefgh|ijklmnop){1000}"]}],
            }
        )
    assert err.value.key == "guard[0].deny_regex[0]"
    assert "pattern too large" in err.value.reason
    # each pattern fits alone, the Set of all of them does not
    many = [f"{'x' * 20}{i}[a-z]{{0,50}}" for i in range(50)]
    for pattern in many:
        compile_pattern(pattern, 1 << 16)
    with pytest.raises(PolicyError, match="together exceeds regex_max_mem"):
        RegexBank(many, 1 << 16)


def test_a_bank_reports_the_lowest_matching_index_in_one_pass() -> None:
    bank = RegexBank(["secret", "AKIA[0-9A-Z]{16}", "(?i)password"])
    assert bank.first_match(b"nothing here") is None
    assert bank.first_match(b"AKIAABCDEFGHIJKLMNOP") == 1
    assert bank.first_match(b"PassWord then secret") == 0  # lowest index, not leftmost
    assert bank.first_match(b"x" * 10_000 + b"password") == 2  # unanchored
    assert RegexBank([]).first_match(b"anything") is None


def test_banks_match_utf8_bytes_and_survive_invalid_utf8() -> None:
    bank = RegexBank(["caf.$", r"\x{1F600}"])
    assert bank.first_match("café".encode()) == 0  # '.' is one code point, two bytes
    assert bank.first_match("hi 😀".encode()) == 1
    assert bank.first_match(b"\xff\xfe\xfd") is None


def test_program_sizes_are_reported_per_pattern() -> None:
    sizes = RegexBank(["a", "[a-z]{100}"]).program_sizes()
    assert len(sizes) == 2
    assert 0 < sizes[0] < sizes[1]


def test_catastrophic_backtracking_input_is_linear_under_re2() -> None:
    # (a+)+$ on "a"*n + "!" takes exponential time under Python's re; RE2 is
    # linear. The bound is generous on purpose: the point is "not hours".
    hostile = b"a" * 100_000 + b"!"
    bank = RegexBank([r"(a+)+$", r"^(\w+\s?)*$"])
    compiled = compile_pattern(r"(a+)+$")
    started = time.perf_counter()
    assert bank.first_match(hostile) is None
    assert compiled.search(hostile.decode()) is None
    assert time.perf_counter() - started < 1.0


def test_compile_pattern_returns_a_usable_re2_object() -> None:
    emails = compile_pattern(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
    assert emails.sub("[email]", "write to a.b@example.org now") == "write to [email] now"
    assert emails.groups == 0 and emails.pattern.startswith("[A-Za-z")


def test_ctx_regex_matches_text_holding_a_lone_surrogate() -> None:
    # Callable guards now receive lone surrogates intact (policy/inputs.py); re2
    # itself raises UnicodeEncodeError on them, which would fail the guard.
    words = compile_pattern(r"^[\w ]*$")
    assert words.search("plain words") is not None
    assert words.search("word\ud800") is None  # the surrogate is no word character
    m = compile_pattern(r"b+").search("a\udc00bb")
    assert m is not None and m.span() == (2, 4)  # positions index the original text
    assert compile_pattern("x").sub("y", "x\ud800x") == "y\ufffdy"
    assert compile_pattern(r"\s").split("a\ud800 b") == ["a\ufffd", "b"]
    assert compile_pattern(".").findall("\ud800") == ["\ufffd"]
    assert compile_pattern(".+").fullmatch("\udfff\udfff") is not None


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"\w+", [r"'\w' is ASCII-only"]),
        (r"\W", [r"'\W' matches every non-ASCII"]),
        (r"\d{3}", [r"'\d' is ASCII-only"]),
        (r"\D", [r"'\D' matches non-ASCII digits"]),
        (r"a\sb", [r"'\s' is ASCII-only"]),
        (r"\S+", [r"'\S' matches Unicode spaces"]),
        (r"\bcat\b", [r"'\b' uses ASCII"]),
        (r"\B", [r"'\B' uses ASCII"]),
        ("done$", ["'$' matches only at the very end"]),
        ("(a$|b)", ["'$' matches only at the very end"]),
        (r"\w+$", [r"'\w' is ASCII-only", "'$' matches only"]),
        # no difference: escaped or in a class, multiline, Unicode classes, plain text
        (r"\\w", []),
        (r"\$5", []),
        ("[$]", []),
        ("[]$]", []),
        ("[^]$]", []),
        ("(?m)^done$", []),
        (r"[\pL\pN_]+", []),
        ("AKIA[0-9A-Z]{16}", []),
    ],
)
def test_semantic_warnings(pattern: str, expected: list[str]) -> None:
    warnings = re_semantic_warnings(pattern)
    assert len(warnings) == len(expected)
    for warning, start in zip(warnings, expected, strict=True):
        assert warning.startswith(start)


def test_the_warned_differences_are_real() -> None:
    # Each warning above describes an actual disagreement between the engines.
    assert re.search(r"\w", "é") and compile_pattern(r"\w").search("é") is None
    assert re.search(r"\d", "٣") and compile_pattern(r"\d").search("٣") is None
    assert re.search(r"\s", "\u00a0") and compile_pattern(r"\s").search("\u00a0") is None
    assert re.search("done$", "done\n") and compile_pattern("done$").search("done\n") is None
    assert compile_pattern(r"done\n?$").search("done\n") is not None
    # A repeat of something that can match empty ends elsewhere (found by fuzz/test_re2_vs_re.py).
    empty_loop = "(?:(a|(?:.)*?))*"
    assert re.search(empty_loop, "a1").span() == (0, 1)  # type: ignore[union-attr]
    assert compile_pattern(empty_loop).search("a1").span() == (0, 2)  # type: ignore[union-attr]
