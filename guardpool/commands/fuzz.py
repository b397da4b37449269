"""``guardpool fuzz``: attack every guard through the real pool; report what the author can fix.

    guardpool fuzz --config F [--seconds N] [--guard NAME] [--findings DIR] [--json] [--sarif FILE]
    guardpool fuzz --replay DIR/NAME.json

Each guard — regex bank or callable — runs in the pool under the policy's own
limits, so a finding is what an attacker would get in production. Findings
(see ``guardpool.analysis.fuzzing``) are de-duplicated by guard and kind,
minimised, confirmed and written as reproducers that replay from anywhere.

Exit codes: 0 nothing found (or, with ``--replay``, no longer reproduces), 1
something found (still reproduces), 2 bad input — including a ``--seconds``
too short for some guard to run on a single input: zero runs is not a pass
(the report is printed, then one line naming the untested guards; JSON has
them under ``untested``). Progress goes to stderr; the summary table to
stdout, or to stderr with ``--json`` (stdout is then JSON).

``--replay FILE`` is trusted like a policy file: it names the policy to load
and directories to put on ``sys.path``, and loading that policy imports and
runs the guard modules it names. Replay only files you (or your CI) wrote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from guardpool import __version__
from guardpool.analysis import findings as fs
from guardpool.analysis.fuzzing import KINDS, GuardFuzzer, default_labels
from guardpool.cli import EXIT_DENIED, EXIT_OK, UsageError, in_range
from guardpool.commands.reporting import Steps, check_output, console
from guardpool.policy.loader import Policy, load_policy
from guardpool.runner.pool import GuardPool

# The longest run a flag may ask for: a finite bound, so "1e400" is an error, not forever.
_WEEK_S = 7 * 24 * 3600


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="policy file (TOML or JSON)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="fuzzing time, shared by the guards (30); when a guard runs on no input in "
        "its share, nothing was tested: exit 2",
    )
    parser.add_argument("--guard", action="append", help="only this guard (repeatable)")
    parser.add_argument(
        "--findings",
        "--out",
        dest="findings",
        default="fuzz-findings",
        metavar="DIR",
        help="where reproducers go (default fuzz-findings/)",
    )
    parser.add_argument("--seed", type=int, default=0, help="input generator seed (0)")
    parser.add_argument(
        "--minimise-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="time to shrink each finding (10)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--sarif", metavar="FILE", help="also write findings as SARIF 2.1.0")
    parser.add_argument(
        "--replay",
        metavar="FILE",
        help="re-run one reproducer through the real pool; exit 1 while it still reproduces. "
        "Trusted like a policy file: it names the policy to load and directories to import "
        "guard modules from, so replay only files you or your CI wrote",
    )


def _start(policy: Policy) -> GuardPool:
    pool = GuardPool.from_config(policy)
    try:
        return pool.start()
    except RuntimeError as exc:
        raise UsageError(f"cannot start the worker pool for this policy: {exc}") from None


def main(args: argparse.Namespace) -> int:
    if args.replay:
        return replay(Path(args.replay), as_json=args.json)
    if not args.config:
        raise UsageError("--config is required (or --replay FILE)")
    in_range("--seconds", args.seconds, 0, _WEEK_S, above=True)
    in_range("--minimise-seconds", args.minimise_seconds, 0, _WEEK_S)
    check_output("--findings", args.findings, directory=True)
    if args.sarif:
        check_output("--sarif", args.sarif)
    policy = load_policy(args.config)
    names = args.guard or list(policy.guards)
    unknown = [n for n in names if n not in policy.guards]
    if unknown:
        raise UsageError(f"no guard named {', '.join(unknown)} in {args.config}")
    if not names:
        raise UsageError(f"{args.config} has no guards to fuzz")
    out_dir = Path(args.findings)
    err = console(stderr=True)
    share = args.seconds / len(names)
    fuzzers: dict[str, GuardFuzzer] = {}
    records: list[dict[str, Any]] = []
    pool = _start(policy)
    try:
        with Steps(err) as steps:
            for name in names:
                labels = default_labels(policy.guards[name])
                fuzzer = fuzzers[name] = GuardFuzzer(policy, pool, name, labels)
                steps.start(f"fuzzing {name}", share)

                def progress(elapsed: float, f: GuardFuzzer = fuzzer) -> None:
                    steps.advance(
                        elapsed, f"{f.stats.runs} runs, {sum(f.stats.counts.values())} found"
                    )

                first = fuzzer.run(share, seed=args.seed, on_progress=progress)
                steps.done(f"{fuzzer.stats.runs} runs, {len(first)} kind(s) of finding")
                for kind in KINDS:
                    if kind not in first:
                        continue
                    value, obs = first[kind]
                    steps.start(f"minimising {name} {kind} ({len(value)} chars)", 1)
                    found = fuzzer.finding(kind, value, obs, args.minimise_seconds)
                    path = out_dir / fs.file_name(name, kind)
                    data = fs.record(
                        found,
                        policy_path=Path(args.config),
                        policy_digest=policy.digest,
                        labels=labels,
                        path=path,
                    )
                    fs.write(out_dir, data)
                    records.append(data)
                    steps.done(
                        f"{len(value)} -> {len(found.value)} chars, "
                        f"reproduced {found.confirmed}/{found.attempts}"
                    )
    finally:
        pool.shutdown()
    if args.sarif:
        locations = {n: fs.guard_location(policy.guards[n], Path(args.config)) for n in names}
        Path(args.sarif).write_text(
            json.dumps(fs.sarif(records, locations, __version__), indent=2) + "\n",
            encoding="utf-8",
        )
    report = _report(fuzzers, records, args)
    untested = _untested(fuzzers, share)
    report["untested"] = untested
    out = console(stderr=args.json)
    out.print(_table(report))
    if records:
        out.print(f"{len(records)} finding(s); reproducers in {out_dir}/:")
        for r in records:
            out.print(f"  {r['guard']} {r['kind']}: {r['detail']}\n    {r['replay']}")
    elif not untested:
        out.print(
            "nothing found: no guard timed out, crashed, ran out of memory, raised, "
            "or disagreed with re"
        )
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=True) + "\n")
    if records:
        return EXIT_DENIED
    if untested:
        # Zero runs is not a pass: "nothing found" after fuzzing nothing read like one.
        raise UsageError(
            "nothing was tested: "
            + "; ".join(f"guard {name!r} ran on no input ({why})" for name, why in untested.items())
        )
    return EXIT_OK


def _untested(fuzzers: dict[str, GuardFuzzer], share: float) -> dict[str, str]:
    """Guards the fuzzer never ran on an input, with why."""
    untested = {}
    for name, f in fuzzers.items():
        if f.stats.runs:
            continue
        if f.stats.refused:
            untested[name] = f"the enforcer refused all {f.stats.refused} inputs before it ran"
        else:
            untested[name] = f"its share of --seconds was {share:.3g} s: give it more time"
    return untested


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _report(
    fuzzers: dict[str, GuardFuzzer], records: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    guards = []
    for name, f in fuzzers.items():
        ordered = sorted(f.stats.ms)
        guards.append(
            {
                "guard": name,
                "runs": f.stats.runs,
                "refused_by_enforcer": f.stats.refused,
                "p50_ms": round(statistics.median(ordered), 3) if ordered else 0.0,
                "p99_ms": round(_percentile(ordered, 0.99), 3),
                "max_ms": round(ordered[-1], 3) if ordered else 0.0,
                "occurrences": dict(f.stats.counts),
                "re_skipped": f.stats.re_skipped,
                "findings": [r["kind"] for r in records if r["guard"] == name],
            }
        )
    return {
        "policy": str(Path(args.config).resolve()),
        "seconds": args.seconds,
        "seed": args.seed,
        "guards": guards,
        "findings": records,
    }


def _table(report: dict[str, Any]) -> Table:
    table = Table(title="guardpool fuzz", show_edge=False)
    columns = ["guard", "runs", "refused", "p50 ms", "p99 ms", "max ms", "findings"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("guard", "findings") else "right")
    for g in report["guards"]:
        found = ", ".join(f"{k} ×{g['occurrences'].get(k, 0)}" for k in g["findings"]) or "-"
        table.add_row(
            g["guard"],
            str(g["runs"]),
            str(g["refused_by_enforcer"]),
            f"{g['p50_ms']:.2f}",
            f"{g['p99_ms']:.2f}",
            f"{g['max_ms']:.2f}",
            found,
        )
    return table


def replay(path: Path, *, as_json: bool) -> int:
    try:
        data = fs.read(path)
    except fs.BadReproducer as exc:
        raise UsageError(str(exc)) from None
    for entry in data.get("sys_path") or []:
        if isinstance(entry, str) and entry not in sys.path:
            sys.path.append(entry)  # after the policy's own directories (see fs docstring)
    policy = load_policy(data["policy"])
    name, kind = data["guard"], data["kind"]
    if name not in policy.guards:
        raise UsageError(f"{data['policy']} no longer has a guard named {name!r}")
    err = console(stderr=True)
    if data.get("policy_digest") and data["policy_digest"] != policy.digest:
        err.print(f"note: {data['policy']} changed since this finding was recorded")
    pool = _start(policy)
    try:
        fuzzer = GuardFuzzer(policy, pool, name, tuple(data["labels"]))
        started = time.monotonic()
        obs = fuzzer.observe(data["value"])
        ms = (time.monotonic() - started) * 1000
    finally:
        pool.shutdown()
    still = obs.kind == kind
    if obs.refused:
        now = f"refused by the enforcer before any guard ran: {obs.refused}"
    elif obs.kind is None:
        now = f"ran fine ({obs.job.outcome if obs.job else 'ok'}, {ms:.1f} ms)"
    else:
        now = f"{obs.kind}: {obs.detail}"
    if as_json:
        sys.stdout.write(
            json.dumps(
                {"guard": name, "kind": kind, "reproduces": still, "now": now, "file": str(path)}
            )
            + "\n"
        )
    else:
        verdict = "still reproduces" if still else "no longer reproduces"
        print(f"{name} {kind}: {verdict} — {now}")
    return EXIT_DENIED if still else EXIT_OK
