"""Run every atheris harness for a share of the time: ``python -m fuzz.run --seconds N``."""

from __future__ import annotations

import argparse
import subprocess
import sys

HARNESSES = ("fuzz.harness_config", "fuzz.harness_protocol")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    share = max(1, args.seconds // len(HARNESSES))
    failed = 0
    for module in HARNESSES:
        print(f"== {module}: {share} s", flush=True)
        rc = subprocess.call(
            [sys.executable, "-m", module, f"-max_total_time={share}", "-rss_limit_mb=2048"]
        )
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
