"""The enforcer across processes: one sqlite file, many hosts, and a host killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from guardpool import Enforcer
from guardpool.audit.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent

HOST = textwrap.dedent(
    """
    import json, sys
    from guardpool import Enforcer, Operation, Usage
    cfg = json.loads(sys.argv[1])
    granted = 0
    with Enforcer.from_config(cfg) as e:
        run = e.run("shared", principal="team")
        for _ in range(int(sys.argv[2])):
            d = run.check(Operation(labels=("exe:llm:gpt-4o",), input="hi",
                                    estimate=Usage(cost="0.25")))
            if d.allowed:
                granted += 1
                run.settle(d, Usage(cost="0.25"))
                print("granted", flush=True)
    print(json.dumps({"granted": granted}), flush=True)
    """
)


def _config(tmp_path: Path) -> dict[str, object]:
    db = str(tmp_path / "shared.db")
    return {
        "limits": {"exe:llm:*": {"cost": "$10.00", "scope": "principal"}},
        "store": {"backend": "sqlite", "path": db},
        "audit": {"path": db},
    }


def _spawn(cfg: dict[str, object], n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOST, json.dumps(cfg), str(n)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_four_hosts_sharing_one_sqlite_file_grant_the_budget_exactly(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    hosts = [_spawn(cfg, 20) for _ in range(4)]
    totals = []
    for host in hosts:
        out, _ = host.communicate(timeout=120)
        assert host.returncode == 0
        totals.append(json.loads(out.strip().splitlines()[-1])["granted"])
    assert sum(totals) == 40  # $10 in $0.25 steps, 80 attempts
    with Enforcer.from_config(cfg) as e:
        (cost,) = [s for s in e.usage("shared", "team") if s.dimension == "cost"]
    assert (cost.used, cost.reserved) == (10_000_000, 0)
    ledger = Ledger(tmp_path / "shared.db")
    try:
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_a_host_killed_mid_run_loses_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    host = _spawn(cfg, 1000)
    assert host.stdout is not None
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 10 and time.monotonic() < deadline:
        if host.stdout.readline().startswith("granted"):
            seen += 1
    os.kill(host.pid, signal.SIGKILL)
    host.wait()
    assert seen == 10
    with Enforcer.from_config(cfg) as e:
        (cost,) = [s for s in e.usage("shared", "team") if s.dimension == "cost"]
    # Every settle the host reported is there; at most one reservation was in
    # flight when it died, and that one stays reserved until its TTL.
    assert cost.used >= 10 * 250_000
    assert cost.used + cost.reserved <= 10_000_000
    assert cost.reserved in (0, 250_000)
    ledger = Ledger(tmp_path / "shared.db")
    try:
        report = ledger.verify()
        assert report.ok, report.reason
        settles = [ev for ev in ledger.events("shared") if ev.event.kind == "settle"]
        assert len(settles) * 250_000 == cost.used
    finally:
        ledger.close()
