"""``guardpool bench``: measure every guard on its own and recommend limits it passes under.

    guardpool bench --config F [--seconds N] [--samples FILE] [--json] [--write OUT|-]

Each guard runs in a fresh one-worker pool on realistic and adversarial
inputs (see ``guardpool.analysis.benchmark`` for what is measured and why one
worker per guard, ``guardpool.analysis.recommend`` for the headroom). The
recommendation is verified with the policy's own worker count before it is
shown or written.

stdout carries data: the report (default), JSON (``--json``) or the whole
tuned config (``--write -``); progress, and the table when stdout carries
JSON or TOML, go to stderr. ``--write OUT`` writes the user's own file with
only ``job_timeout_ms``, ``job_cpu_ms``, ``memory_mb`` and callable guards'
``timeout_ms`` changed, comments and order kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from guardpool.analysis import benchmark as bm
from guardpool.analysis import limits_file
from guardpool.analysis import recommend as rc
from guardpool.cli import EXIT_OK, UsageError, in_range
from guardpool.commands.reporting import Steps, check_output, console
from guardpool.policy.bounds import MAX_JOB_MS, MAX_MEMORY_MB, MIN_MEMORY_MB
from guardpool.policy.errors import PolicyError
from guardpool.policy.loader import Policy, load_policy

_WEEK_S = 7 * 24 * 3600
# Generated inputs per guard; each is a job in a fresh worker.
_MAX_ADVERSARIAL = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy file (TOML or JSON)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="time for repeated realistic runs, shared by the guards (20)",
    )
    parser.add_argument("--samples", help="your own inputs: one per line, or a JSON list")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument(
        "--write",
        metavar="OUT",
        help="write the config with the recommended limits to OUT ('-' for stdout)",
    )
    parser.add_argument(
        "--basis",
        choices=("all", "realistic"),
        default="all",
        help="inputs the limits must let pass: all (default) or realistic only",
    )
    parser.add_argument(
        "--cap-ms", type=int, default=2000, help="measuring deadline per job (2000)"
    )
    parser.add_argument(
        "--memory-cap-mb",
        type=int,
        default=None,
        help="address-space cap while measuring (default max(1024, 4 x memory_mb))",
    )
    parser.add_argument(
        "--adversarial", type=int, default=40, help="adversarial inputs per guard (40)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the verification run")


def load_samples(path: str | None) -> list[str]:
    if path is None:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read samples {path}: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"samples {path}: invalid JSON: {exc}") from None
        if not isinstance(loaded, list) or not all(isinstance(s, str) for s in loaded):
            raise UsageError(f"samples {path}: a JSON samples file is a list of strings")
        return list(loaded)
    return [line for line in text.splitlines() if line]


def main(args: argparse.Namespace) -> int:
    # Checked before any measuring, and named: out of range, these surfaced seconds
    # later as errors about pool.job_timeout_ms or pool.memory_mb.
    in_range("--seconds", args.seconds, 0, _WEEK_S)
    in_range("--cap-ms", args.cap_ms, 0, MAX_JOB_MS, above=True)
    in_range("--adversarial", args.adversarial, 0, _MAX_ADVERSARIAL)
    if args.memory_cap_mb is not None:
        in_range("--memory-cap-mb", args.memory_cap_mb, MIN_MEMORY_MB, MAX_MEMORY_MB)
    if args.write and args.write != "-":
        check_output("--write", args.write)
    policy = load_policy(args.config)
    if not policy.guards:
        raise UsageError(f"{args.config} has no guards to measure")
    user = load_samples(args.samples)
    memory_cap = args.memory_cap_mb or max(1024, 4 * policy.config.pool.memory_mb)
    basis: tuple[bm.InputSet, ...] = (
        ("realistic",) if args.basis == "realistic" else ("realistic", "adversarial")
    )
    data_on_stdout = args.json or args.write == "-"
    err = console(stderr=True)
    runs: dict[str, bm.GuardRun] = {}
    with Steps(err) as steps:
        steps.start("measuring the memory a worker needs to start", 1)
        floor = bm.start_floor_mb(policy)
        steps.done(f"{floor} MiB")
        share = args.seconds / len(policy.guards)
        for name in policy.guards:
            samples = bm.samples_for(policy, name, user, args.adversarial)
            steps.start(f"measuring {name}", len(samples))
            runs[name] = bm.measure(
                policy,
                name,
                samples,
                seconds=share,
                cap_ms=args.cap_ms,
                memory_mb=memory_cap,
                on_job=lambda done, total: steps.advance(min(done, total), f"{done} jobs"),
            )
            run = runs[name]
            steps.done(f"{len(run.jobs)} jobs, {len(run.failed_samples())} inputs hit a limit")
        rec = rc.recommend(policy, runs, floor, basis)
        notes: list[str] = []
        verified = False
        if not args.no_verify and rec.guard_timeouts:
            steps.start("verifying the recommendation with the policy's worker count", 1)
            rec, notes = rc.verify(policy, runs, rec)
            verified = not notes or not notes[-1].startswith("still failing")
            steps.done("every passing input passes" if verified else "see notes")
    report = _report(policy, args, runs, rec, notes, verified, basis)
    if args.write:
        report["written"] = _write(policy, args, rec, report)
    table_console = console(stderr=data_on_stdout)
    _print(table_console, report)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return EXIT_OK


def _pool_values(rec: rc.Recommendation) -> dict[str, int]:
    return {
        "job_timeout_ms": rec.job_timeout_ms,
        "job_cpu_ms": rec.job_cpu_ms,
        "memory_mb": rec.memory_mb,
    }


def _write(
    policy: Policy, args: argparse.Namespace, rec: rc.Recommendation, report: dict[str, Any]
) -> str:
    source = Path(args.config)
    try:
        text, changes = limits_file.rewrite(source, _pool_values(rec), rec.guard_timeouts)
        report["changes"] = [{"key": c.key, "old": c.old, "new": c.new} for c in changes]
        if args.write == "-":
            sys.stdout.write(text)
            return "-"
        out = Path(args.write)
        limits_file.write(out, text, like=source)
    except limits_file.WriteError as exc:
        raise UsageError(str(exc)) from None
    except PolicyError as exc:  # pragma: no cover - a bug: the tuned file must load
        raise UsageError(f"the tuned config does not load ({exc}); nothing written") from None
    except OSError as exc:
        raise UsageError(f"--write {args.write}: {exc.strerror}") from None
    if out.resolve().parent != source.resolve().parent:
        report["notes"].append(
            f"{out} is in another directory than {source}: relative paths in it "
            "(store, audit, guard modules beside the policy) now resolve from there"
        )
    return str(out)


def _stats(values: list[float]) -> dict[str, float]:
    s = rc.Stats.of(values)
    return {"n": s.n, "p50": round(s.p50, 3), "p99": round(s.p99, 3), "max": round(s.max, 3)}


def _report(
    policy: Policy,
    args: argparse.Namespace,
    runs: dict[str, bm.GuardRun],
    rec: rc.Recommendation,
    notes: list[str],
    verified: bool,
    basis: tuple[bm.InputSet, ...],
) -> dict[str, Any]:
    pool = policy.config.pool
    guards = []
    for name, run in runs.items():
        jobs = run.passing()
        rss = [j.rss_kib for j in jobs if j.rss_kib is not None]
        vm = [j.vm_peak_kib for j in jobs if j.vm_peak_kib is not None]
        by_set = {
            kind: {
                "wall_ms": _stats([j.wall_ms for j in run.passing((kind,))]),
                "cpu_ms": _stats([j.cpu_ms for j in run.passing((kind,))]),
            }
            for kind in ("realistic", "adversarial")
        }
        failed = []
        for index in run.failed_samples():
            sample = run.samples[index]
            last = next(j for j in reversed(run.jobs) if j.sample == index)
            failed.append(
                {
                    "set": sample.kind,
                    "source": sample.source,
                    "length": len(sample.value),
                    "outcome": last.outcome,
                    "limit": last.limit,
                }
            )
        guards.append(
            {
                "guard": name,
                "kind": policy.guards[name].kind,
                "jobs": len(run.jobs),
                "passed": len(jobs),
                "wall_ms": _stats([j.wall_ms for j in jobs]),
                "cpu_ms": _stats([j.cpu_ms for j in jobs]),
                "by_set": by_set,
                "peak_rss_mib": round(max(rss) / 1024, 1) if rss else None,
                "peak_address_space_mib": round(max(vm) / 1024, 1) if vm else None,
                "worker_start_mib": round(run.worker_start_kib / 1024, 1),
                "failed_inputs": failed,
                "hangs": not any(
                    j.passed for j in run.jobs if run.samples[j.sample].kind == "realistic"
                ),
                "timeout_ms": {
                    "current": policy.guards[name].spec.timeout_ms,
                    "recommended": rec.guard_timeouts.get(name),
                },
            }
        )
    current = {
        "job_timeout_ms": pool.job_timeout_ms,
        "job_cpu_ms": pool.job_cpu_ms,
        "memory_mb": pool.memory_mb,
    }
    return {
        "policy": str(Path(args.config).resolve()),
        "basis": list(basis),
        "measuring_cap_ms": args.cap_ms,
        "start_floor_mb": rec.floor_mb,
        "headroom": rc.HEADROOM,
        "pool": {
            key: {"current": current[key], "recommended": value, "why": rec.why[f"pool.{key}"]}
            for key, value in _pool_values(rec).items()
        },
        "guards": guards,
        "verified": verified,
        "notes": notes,
    }


def _print(out: Console, report: dict[str, Any]) -> None:
    table = Table(title="guardpool bench (each guard in its own fresh worker)", show_edge=False)
    for column in (
        "guard",
        "jobs",
        "pass",
        "wall p50",
        "p99",
        "max ms",
        "cpu p99",
        "max ms",
        "RSS MiB",
        "VM MiB",
        "timeout_ms",
    ):
        table.add_column(column, justify="left" if column == "guard" else "right")
    for g in report["guards"]:
        rec = g["timeout_ms"]["recommended"]
        timeout = f"{g['timeout_ms']['current']} -> {rec}" if rec is not None else "unchanged"
        if g["kind"] == "regex":
            timeout = "(RE2, in host)"
        if not g["passed"]:
            table.add_row(g["guard"], str(g["jobs"]), "0", *["-"] * 7, timeout)
            continue
        table.add_row(
            g["guard"],
            str(g["jobs"]),
            str(g["passed"]),
            f"{g['wall_ms']['p50']:.2f}",
            f"{g['wall_ms']['p99']:.2f}",
            f"{g['wall_ms']['max']:.2f}",
            f"{g['cpu_ms']['p99']:.2f}",
            f"{g['cpu_ms']['max']:.2f}",
            "-" if g["peak_rss_mib"] is None else f"{g['peak_rss_mib']:.0f}",
            "-" if g["peak_address_space_mib"] is None else f"{g['peak_address_space_mib']:.0f}",
            timeout,
        )
    out.print(table)
    for g in report["guards"]:
        if g["hangs"]:
            out.print(
                f"{g['guard']}: every realistic input hit the {report['measuring_cap_ms']} ms "
                "measuring cap: it hangs (its timeout_ms is left as it is; see guardpool fuzz)"
            )
        elif g["failed_inputs"]:
            worst = ", ".join(
                f"{f['set']} {f['source']} ({f['length']} chars: {f['outcome']}"
                + (f"/{f['limit']}" if f["limit"] else "")
                + ")"
                for f in g["failed_inputs"][:3]
            )
            out.print(f"{g['guard']}: {len(g['failed_inputs'])} input(s) hit a limit: {worst}")
    out.print(f"\nworker start floor: {report['start_floor_mb']} MiB (no limit goes below it)")
    out.print(f"headroom: {report['headroom']}")
    for key, v in report["pool"].items():
        out.print(f"  [pool] {key}: {v['current']} -> {v['recommended']}   ({v['why']})")
    for note in report["notes"]:
        out.print(f"note: {note}")
    if report["verified"]:
        out.print("verified: every guard's heaviest passing inputs pass under these limits")
    if "written" in report:
        where = "stdout" if report["written"] == "-" else report["written"]
        out.print(f"wrote {where}: {len(report.get('changes', []))} value(s) changed")
    else:
        out.print(f"apply: guardpool bench --config {report['policy']} --write OUT")
