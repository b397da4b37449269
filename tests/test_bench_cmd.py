"""``guardpool bench`` through real workers, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from guardpool.analysis import benchmark
from guardpool.policy.loader import load_policy
from guardpool.runner.pool import GuardPool

ROOT = Path(__file__).resolve().parent.parent

POLICY = """\
# my policy: comments and order must survive --write
[pool]
workers = 1
memory_mb = 128          # too small for the "big" guard
max_jobs_per_worker = 500

[guards]
on_error = "deny"

[[guard]]
name = "big"
call = "tests.bench_guards:needs_110_mib"   # allocates 110 MiB per job
timeout_ms = 5000

[[guard]]
name = "keys"
deny_regex = ['AKIA[0-9A-Z]{16}']
"""


def guardpool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardpool", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def run_big(config: Path) -> str:
    """The big guard's outcome under ``config``'s own limits, through a real pool."""
    policy = load_policy(config)
    with GuardPool.from_config(policy) as pool:
        job = pool.submit_guard("big", "hello").result()
    return job.outcome + (f"/{job.limit}" if job.limit else "")


def test_a_guard_needing_110_mib_gets_a_memory_mb_it_passes_under(tmp_path: Path) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(POLICY)
    assert run_big(config) == "error/memory"  # as the user wrote it, every call fails
    tuned = tmp_path / "tuned.toml"
    out = guardpool(
        "bench", "--config", str(config), "--seconds", "2", "--adversarial", "4",
        "--write", str(tuned), "--json",
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    big = next(g for g in report["guards"] if g["guard"] == "big")
    assert big["peak_address_space_mib"] >= 110 and big["peak_rss_mib"] >= 110
    memory = report["pool"]["memory_mb"]["recommended"]
    assert memory >= 1.25 * big["peak_address_space_mib"]
    assert report["verified"] is True
    # The written file loads, and under it the guard passes.
    assert run_big(tuned) == "ok"
    written = tomllib.loads(tuned.read_text())
    assert written["pool"]["memory_mb"] == memory
    # Only the tuned values changed; comments and order kept.
    original = tomllib.loads(POLICY)
    for key in ("job_timeout_ms", "job_cpu_ms", "memory_mb"):
        written["pool"].pop(key, None)
        original["pool"].pop(key, None)
    for entry in (*written["guard"], *original["guard"]):
        if entry["name"] == "big":
            entry.pop("timeout_ms")
    assert written == original
    text = tuned.read_text()
    assert text.startswith("# my policy: comments and order must survive --write\n")
    assert "# too small for the \"big\" guard" in text
    assert text.index("[pool]") < text.index("[guards]") < text.index('name = "big"')
    assert {c["key"] for c in report["changes"]} >= {"pool.memory_mb", "guard.big.timeout_ms"}


def test_stdout_carries_only_the_tuned_config_and_hanging_guards_keep_their_timeout(
    tmp_path: Path,
) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(
        '[[guard]]\nname = "quick"\ncall = "tests.bench_guards:quick"\ntimeout_ms = 900\n'
        '[[guard]]\nname = "hangs"\ncall = "tests.bench_guards:hangs"\ntimeout_ms = 300\n'
    )
    out = guardpool(
        "bench", "--config", str(config), "--seconds", "1", "--adversarial", "2",
        "--cap-ms", "300", "--write", "-",
    )
    assert out.returncode == 0, out.stderr
    tuned = tomllib.loads(out.stdout)  # `bench --write - > tuned.toml` is TOML
    timeouts = {g["name"]: g["timeout_ms"] for g in tuned["guard"]}
    assert timeouts["hangs"] == 300  # measured as hanging: left alone
    assert 50 <= timeouts["quick"] < 900
    assert tuned["pool"]["job_timeout_ms"] == max(timeouts.values())
    assert "hangs: every realistic input hit the 300 ms measuring cap" in out.stderr
    assert "guardpool bench" in out.stderr  # the table went to stderr


def test_no_recommendation_goes_below_what_a_worker_needs_to_start(tmp_path: Path) -> None:
    config = tmp_path / "policy.toml"
    config.write_text('[[guard]]\nname = "quick"\ncall = "tests.bench_guards:quick"\n')
    policy = load_policy(config)
    floor = benchmark.start_floor_mb(policy)
    # A worker of this policy at the floor can allocate for a job; 8 MiB below, it cannot.
    def allocates(mb: int) -> bool:
        with benchmark.measuring_pool(policy, cap_ms=5000, memory_mb=mb) as pool:
            job = pool.submit("guardpool.analysis.probes:breathe", None).result()
        return job.outcome == "ok"

    assert allocates(floor)
    assert not allocates(floor - 8)
    out = guardpool("bench", "--config", str(config), "--seconds", "1", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert abs(report["start_floor_mb"] - floor) <= 8
    assert report["pool"]["memory_mb"]["recommended"] >= report["start_floor_mb"] + 32


def test_bad_input_exits_2(tmp_path: Path) -> None:
    out = guardpool("bench", "--config", "examples/guardpool.toml", "--samples", "/nonexistent")
    assert out.returncode == 2 and "cannot read samples" in out.stderr
    empty = tmp_path / "empty.toml"
    empty.write_text("[pool]\nworkers = 1\n")
    out = guardpool("bench", "--config", str(empty))
    assert out.returncode == 2 and "no guards" in out.stderr
    out = guardpool("bench", "--config", "examples/guardpool.toml", "--cap-ms", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr
