"""``guardpool test --config F CASES...``: check written-down expectations against a policy.

Like ``opa test`` for OPA policies: each cases file (``guardpool.testing.cases``
documents the format) runs through a real enforcer — the policy's guards in
real workers — on a throw-away memory store and ledger, so budgets start at
zero and the policy's own store and ledger are never touched.

Exit codes: 0 every case matched, 1 some did not (a diff per failing case),
2 bad input (unreadable policy or cases file, unknown key, guard or label).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from guardpool.cli import EXIT_DENIED, EXIT_OK, UsageError
from guardpool.policy.loader import load_policy
from guardpool.testing import cases as cs
from guardpool.testing.enforcer import scratch_enforcer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy file (TOML or JSON)")
    parser.add_argument("cases", nargs="+", metavar="CASES", help="cases files (TOML or JSON)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")


def main(args: argparse.Namespace) -> int:
    policy = load_policy(args.config)
    files = []
    for name in args.cases:
        try:
            files.append(cs.load(Path(name), policy))
        except cs.CasesError as exc:
            raise UsageError(str(exc)) from None
        except RecursionError:  # tomllib and json recurse per nesting level
            raise UsageError(f"{name}: nested too deeply") from None
    report: list[dict[str, Any]] = []
    failed = passed = 0
    for loaded in files:
        # One enforcer per file: cases in a file may share a run's budgets, files never do.
        with scratch_enforcer(policy) as enforcer:
            results = cs.run(enforcer, loaded)
        report.append({"file": str(loaded.path), "cases": [cs.as_json(r) for r in results]})
        for r in results:
            if r.passed:
                passed += 1
            else:
                failed += 1
                if not args.json:
                    print(cs.render_failure(r, loaded.path) + "\n")
    if args.json:
        json.dump({"passed": passed, "failed": failed, "files": report}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{passed} passed, {failed} failed")
    return EXIT_DENIED if failed else EXIT_OK
