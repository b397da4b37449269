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
        ("", "non-empty"),
        ("op::x", "segment ''"),
        ("op:c d", "segment 'c d'"),
        ("op:cmd:", "segment ''"),
        ("é:x", "segment 'é'"),
        ("op/cmd", "segment 'op/cmd'"),
        ("x" * 513, "longer than 512"),
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
