"""``guardpool lint`` on published ReDoS patterns: the detection floor and false-alarm ceiling.

Every corpus entry (tests/redos_corpus.py) is written into a guard module twice
— inline in the ``re`` call and held in a module constant — and checked by the
code ``guardpool lint`` runs (scan, analyse, time the attack in a child). The
rates are enforced; the labels themselves are re-checked by timing the stored
attacks of a sample of entries, with no analyser involved.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guardpool.analysis.ambiguity import Attack
from guardpool.analysis.confirm import confirm
from guardpool.analysis.modcheck import check_modules
from tests.redos_corpus import ENTRIES, FOUND, labels, pairs, rates, write_modules

DETECTION_FLOOR = 0.90
FALSE_ALARM_CEILING = 0.05


def test_every_entry_is_labelled_and_both_sides_are_well_represented() -> None:
    label = labels()
    assert {e[0] for e in ENTRIES} == set(label)
    assert len({e[0] for e in ENTRIES}) == len(ENTRIES)
    values = [v["label"] for v in label.values()]
    assert values.count("vulnerable") >= 40 and values.count("safe") >= 40


def _lint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ids: set[str], *, confirm: bool
) -> dict[str, dict[str, bool]]:
    """Run lint's module check on the corpus entries ``ids``: style -> id -> found."""
    names = {
        module: where
        for module, where in write_modules(tmp_path, ("inline", "constant")).items()
        if where[0] in ids
    }
    monkeypatch.syspath_prepend(str(tmp_path))
    issues = check_modules(names, confirm=confirm, parallel=2, deadline_s=3.0)
    found = {style: dict.fromkeys(ids, False) for style in ("inline", "constant")}
    for issue in issues:
        module = Path(issue.where.rsplit(":", 2)[0]).stem
        if issue.code in FOUND and module in names:
            ident, style = names[module]
            found[style][ident] = True
    return found


def test_the_static_analysis_finds_the_vulnerable_patterns_inline_and_via_constants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    label = {k: v["label"] for k, v in labels().items()}
    found = _lint(tmp_path, monkeypatch, set(label), confirm=False)
    for style, hits in found.items():
        tp, nv, _fp, _ns = rates(hits, label)
        missed = sorted(i for i, v in label.items() if v == "vulnerable" and not hits[i])
        assert tp / nv >= DETECTION_FLOOR, f"{style}: {tp}/{nv} found; missed {missed}"


def test_timing_leaves_no_false_alarm_and_confirms_the_vulnerable_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every safe entry, and every fifth vulnerable one: confirming all of them
    # takes minutes on a shared machine (bench/bench_lint.py does, and prints
    # the full rates next to regexploit's).
    label = {k: v["label"] for k, v in labels().items()}
    safe = {i for i, v in label.items() if v == "safe"}
    sample = set(sorted(i for i, v in label.items() if v == "vulnerable")[::5])
    found = _lint(tmp_path, monkeypatch, safe | sample, confirm=True)
    # A loaded machine blurs a timing now and then (2 of 11 sampled entries went
    # unconfirmed during a full suite at load 4-6, never on a quiet one): each miss
    # is timed once more, alone. Only misses get the second try, so it cannot hide a
    # false alarm, and a safe pattern cannot be "confirmed" by it.
    missed = {i for hits in found.values() for i in sample if not hits[i]}
    if missed:
        (tmp_path / "again").mkdir()
        again = _lint(tmp_path / "again", monkeypatch, missed, confirm=True)
        for style, hits in again.items():
            for i, hit in hits.items():
                found[style][i] = found[style][i] or hit
    for style, hits in found.items():
        alarms = sorted(i for i in safe if hits[i])
        assert len(alarms) / len(safe) <= FALSE_ALARM_CEILING, f"{style}: {alarms}"
        missed = sorted(i for i in sample if not hits[i])
        assert 1 - len(missed) / len(sample) >= DETECTION_FLOOR, f"{style}: missed {missed}"


# Re-timed: entries far from the quadratic/cubic boundary (exponential, or degree
# >= 4 when labelled), so that a loaded machine cannot blur the verdict; the
# degree-3 ones are covered, with a tolerance, by the sampled lint run above.
_VULNERABLE = sorted(
    i
    for i, v in labels().items()
    if v["label"] == "vulnerable" and (v["growth"] == "exponential" or v["degree"] >= 4)
)


@pytest.mark.parametrize("ident", _VULNERABLE[1::6])
def test_a_vulnerable_label_holds_when_its_attack_is_timed_again(ident: str) -> None:
    entry = next(e for e in ENTRIES if e[0] == ident)
    doc = labels()[ident]
    prefix, parts, suffix = doc["attack"]
    attack = Attack(prefix, tuple((p, c) for p, c in parts), suffix)
    result = confirm(
        entry[1],
        attack,
        flags=entry[2],
        call=entry[3],
        exponential=doc["growth"] == "exponential",
        deadline_s=3.0,
    )
    assert result.confirmed, f"{ident}: {result.describe()}"


_FIXES = sorted(
    i
    for i, p in pairs().items()
    if labels()[i]["label"] == "safe" and labels()[p]["label"] == "vulnerable"
)


@pytest.mark.parametrize("ident", _FIXES[::4])
def test_a_fix_stays_fast_on_the_attack_that_broke_its_original(ident: str) -> None:
    entry = next(e for e in ENTRIES if e[0] == ident)
    prefix, parts, suffix = labels()[pairs()[ident]]["attack"]
    attack = Attack(prefix, tuple((p, c) for p, c in parts), suffix)
    result = confirm(entry[1], attack, flags=entry[2], call=entry[3], deadline_s=1.5)
    assert not result.confirmed, f"{ident}: {result.describe()}"
