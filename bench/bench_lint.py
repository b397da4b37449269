"""Detection and false-alarm rates of ``guardpool lint`` on the ReDoS corpus, beside regexploit's.

The corpus is tests/redos_corpus.py, labelled by timing CPython's re
(tests/data/redos_labels.json, see bench/label_redos_corpus.py). Every entry
is written into a guard module twice — the pattern inline in the ``re`` call,
and held in a module constant — and run through the same code as
``guardpool lint`` (``analysis.modcheck.check_modules``: scan, analyse, time
the attack). A vulnerable entry is *found* when lint reports a confirmed
danger (GP101/GP102); a safe entry is a *false alarm* when it does. The
static verdict alone (before timing) is printed too. regexploit, when
installed, is run on the same patterns the way its CLI decides (a finding of
starriness > 2). Timings are CPU time in children; the machine may be shared.

    .venv/bin/python bench/bench_lint.py [--jobs N] [--deadline S]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardpool.analysis.modcheck import check_modules  # noqa: E402
from guardpool.analysis.redos import analyse  # noqa: E402
from tests.redos_corpus import ENTRIES, FOUND, labels, rates, write_modules  # noqa: E402


def lint_found(jobs: int, deadline: float) -> dict[str, dict[str, bool]]:
    """Confirmed danger per style and entry, through lint's own module check."""
    with tempfile.TemporaryDirectory() as tmp:
        names = write_modules(Path(tmp), ("inline", "constant"))
        sys.path.insert(0, tmp)
        try:
            issues = check_modules(names, confirm=True, parallel=jobs, deadline_s=deadline)
        finally:
            sys.path.remove(tmp)
    found = {style: {e[0]: False for e in ENTRIES} for style in ("inline", "constant")}
    for issue in issues:
        module = Path(issue.where.rsplit(":", 2)[0]).stem
        if issue.code in FOUND and module in names:
            ident, style = names[module]
            found[style][ident] = True
    return found


def static_found() -> dict[str, bool]:
    return {e[0]: bool(analyse(e[1], e[2], e[3])) for e in ENTRIES}


def regexploit_found() -> dict[str, bool] | None:
    try:
        from regexploit.ast.sre import SreOpParser
        from regexploit.redos import find
    except ImportError:
        return None
    out = {}
    for ident, pattern, flags, *_ in ENTRIES:
        try:
            found = find(SreOpParser().parse_sre(pattern, flags))
            out[ident] = any(r.starriness > 2 for r in found)
        except Exception:  # regexploit refuses some constructs: count as not found
            out[ident] = False
    return out


def row(name: str, r: tuple[int, int, int, int]) -> str:
    tp, nv, fp, ns = r
    return (
        f"| {name} | {tp} / {nv} ({tp / max(nv, 1):.0%}) | {fp} / {ns} ({fp / max(ns, 1):.1%}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    label = {k: v["label"] for k, v in labels().items()}
    results: dict[str, tuple[int, int, int, int]] = {}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    results["guardpool static analysis (no timing)"] = rates(static_found(), label)
    timings["static"] = time.perf_counter() - t
    t = time.perf_counter()
    found = lint_found(args.jobs, args.deadline)
    timings["lint (both styles; each pattern timed once)"] = time.perf_counter() - t
    for style in ("inline", "constant"):
        results[f"guardpool lint, pattern {style}"] = rates(found[style], label)
    t = time.perf_counter()
    rx = regexploit_found()
    timings["regexploit"] = time.perf_counter() - t
    if rx is not None:
        results["regexploit 1.0.0 (starriness > 2)"] = rates(rx, label)
    if args.json:
        print(json.dumps({"rates": results, "seconds": timings}))
        return
    print(f"corpus: {len(label)} published patterns, labelled by timing CPython re")
    print("| tool | vulnerable found | false alarms on safe patterns |")
    print("|---|---|---|")
    for name, r in results.items():
        print(row(name, r))
    if rx is None:
        print("| regexploit | not installed (pip install regexploit) | |")
    print(
        "seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        + f" (jobs={args.jobs}, deadline {args.deadline}s per confirmation; shared machine)"
    )


if __name__ == "__main__":
    main()
