"""Label patterns: colon segments, hierarchical prefixes, wildcards, most-specific ordering."""

from __future__ import annotations

import pytest

from guardpool.policy.labels import (
    match,
    matches_any,
    specificity,
    validate_label,
    validate_pattern,
)


@pytest.mark.parametrize(
    ("pattern", "label", "expected"),
    [
        ("*", "anything:at:all", True),
        ("*", "x", True),
        # a plain pattern is a hierarchical prefix, by whole segments
        ("op:cmd", "op:cmd", True),
        ("op:cmd", "op:cmd:git:push", True),
        ("op:cmd", "op:cmdx", False),
        ("op:cmd:git", "op:cmd:git", True),
        ("op:cmd:git", "op:cmd:git:push", True),
        ("op:cmd:git", "op:cmd:gitx", False),
        ("op:cmd:git", "op:cmd:gitx:push", False),
        ("op:cmd:git", "op:cmd", False),
        # a trailing ":*" means everything under the prefix, and the prefix itself
        ("op:cmd:*", "op:cmd:git", True),
        ("op:cmd:*", "op:cmd:git:push", True),
        ("op:cmd:*", "op:cmd", True),
        ("op:cmd:*", "op:cmdx", False),
        ("op:cmd:*", "op", False),
        # an inner "*" is exactly one segment
        ("exe:*:gpt-4o", "exe:llm:gpt-4o", True),
        ("exe:*:gpt-4o", "exe:llm:gpt-4o:mini", True),
        ("exe:*:gpt-4o", "exe:llm:claude", False),
        ("exe:*:gpt-4o", "exe:gpt-4o", False),
        ("exe:llm:gpt-4o", "exe:llm", False),
        # segments compare exactly: case and punctuation matter
        ("exe:llm:gpt-4o", "exe:llm:GPT-4o", False),
        ("exe:llm:gpt-4o", "exe:llm:gpt-4o.1", False),
    ],
)
def test_label_pattern_table(pattern: str, label: str, expected: bool) -> None:
    validate_pattern(pattern)
    validate_label(label)
    assert match(pattern, label) is expected


def test_matches_any_is_true_when_one_label_matches() -> None:
    assert matches_any("op:net:w", ["op:cmd:ls", "op:net:w:https"])
    assert not matches_any("op:net:w", ["op:cmd:ls", "op:net:r"])
    assert not matches_any("*", [])


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "must not be empty"),
        ("op::x", "empty segment (doubled ':')"),
        (":op", "empty segment (leading ':')"),
        ("op:cmd:", "empty segment (trailing ':')"),
        ("op:c d", "whitespace (U+0020 SPACE) at position 4"),
        # `$` in a regex matches before a final newline: the grammar is full-string
        ("op:net:w\n", "whitespace (U+000A) at position 8"),
        ("op:net:w\r", "whitespace (U+000D) at position 8"),
        ("op:\tnet", "whitespace (U+0009) at position 3"),
        ("op:net\x00", "control or invisible character (U+0000) at position 6"),
        ("op:net\x1b[2J", "control or invisible character (U+001B) at position 6"),
        ("op:n\u200bet", "control or invisible character (U+200B ZERO WIDTH SPACE)"),
        ("op:net\u2028", "whitespace (U+2028 LINE SEPARATOR)"),
        ("op:n\ud800", "control or invisible character (U+D800)"),
        ("é:x", "segment 'é' has 'é' (U+00E9 LATIN SMALL LETTER E WITH ACUTE)"),
        ("op:ｎet", "segment 'ｎet' has 'ｎ'"),
        ("op:٣", "segment '٣' has '٣'"),
        ("op/cmd", "segment 'op/cmd' has '/'"),
        ("x" * 513, "longer than 512"),
        ("a:" * 32 + "a", "more than 32"),
        ("op:" + "x" * 65, "longer than 64 characters"),
    ],
)
def test_bad_labels_and_patterns_are_refused_with_the_reason(bad: str, reason: str) -> None:
    with pytest.raises(ValueError) as label_err:
        validate_label(bad)
    assert reason in str(label_err.value)
    with pytest.raises(ValueError) as pattern_err:
        validate_pattern(bad)
    assert reason in str(pattern_err.value)


def test_star_is_a_pattern_segment_but_not_a_label_segment() -> None:
    validate_pattern("exe:*:gpt-4o")
    validate_pattern("*")
    with pytest.raises(ValueError, match="segment '\\*'"):
        validate_label("exe:*")
    with pytest.raises(ValueError, match="segment 'gpt\\*'"):
        validate_pattern("exe:llm:gpt*")


def test_deeper_then_more_literal_patterns_are_more_specific() -> None:
    patterns = ["*", "exe:*:gpt-4o", "exe", "exe:llm", "exe:llm:gpt-4o", "exe:*"]
    ranked = sorted(patterns, key=specificity, reverse=True)
    assert ranked == ["exe:llm:gpt-4o", "exe:*:gpt-4o", "exe:llm", "exe", "exe:*", "*"]
    # a trailing ":*" adds no depth: it matches what the bare prefix matches
    assert specificity("exe:llm:*") == specificity("exe:llm")
    # an inner wildcard pins a depth, so it beats a shallower exact prefix
    assert specificity("exe:*:gpt-4o") > specificity("exe:llm")


def test_a_trailing_newline_is_refused_where_a_dollar_anchor_would_pass() -> None:
    # The bug this grammar fixes: re.match(r"^[...]+$", "w\n") matches, and the
    # label then matched no pattern: no guard ran and no budget was charged.
    import re

    assert re.match(r"^[A-Za-z0-9_.\-]+$", "w\n") is not None
    with pytest.raises(ValueError, match="U\\+000A"):
        validate_label("op:net:w\n")
    with pytest.raises(ValueError, match="U\\+000A"):
        validate_pattern("op:net:w\n")


def test_every_door_builds_an_operation_and_the_operation_checks_its_labels() -> None:
    from guardpool.policy.model import Operation

    assert Operation(labels="op:net:w").labels == ("op:net:w",)
    with pytest.raises(ValueError, match=r"Operation\.labels\[1\]: bad label 'op:net:w\\n'"):
        Operation(labels=("op:cmd", "op:net:w\n"))
    with pytest.raises(ValueError, match="at least one label"):
        Operation(labels=())
    with pytest.raises(ValueError, match="must be a string, not int"):
        Operation(labels=(1,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 64 labels"):
        Operation(labels=tuple(f"op:x{i}" for i in range(65)))


def test_the_longest_legal_label_is_accepted() -> None:
    longest = ":".join(["a" * 15] * 32)  # 32 segments, 511 characters
    validate_label(longest)
    validate_pattern(longest)
    validate_label(":".join(["b" * 64] * 7))
