"""Claude Code hook cost per tool call: HTTP hook against command hook, in one run.

    python bench/bench_claude_code_hooks.py [--calls N] [--quick]

One "tool call" is what Claude Code does around a tool: a PreToolUse and then a
PostToolUse, on payloads recorded from a real Claude Code (every tool type,
round robin, each call with its own tool_use_id). Three forms, same policy
(2 regex banks, 1 after-guard, limits on the sqlite store), same run:

  http            POST both payloads to the sidecar's /v1/hooks/claude-code
                  (keep-alive connection, as Claude Code's client uses)
  command+server  `guardpool hook claude-code --server URL`: a process per payload
  command+config  `guardpool hook claude-code --config F`: a process per payload that
                  also loads the policy and opens the store and ledger

Prints p50/p90 per tool call for each, and the ratios to the HTTP form. Wall
times on a shared machine: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sidecar import TOKEN, Sidecar  # noqa: E402

RECORDED = ROOT / "tests" / "data" / "hooks" / "claude-code-2.1.197"
POLICY = """
[[guard]]
name = "keys"
deny_regex = ['AKIA[0-9A-Z]{{16}}', '-----BEGIN [A-Z ]*PRIVATE KEY-----']
[[guard]]
name = "rm"
ops = ["op:cmd:rm"]
deny_regex = ['-[a-zA-Z]*r']
[[guard]]
name = "injection"
phase = "after"
ops = ["op:mcp", "op:net:r"]
deny_regex = ['(?i)ignore (all )?previous instructions']
[limits."op:cmd:*"]
calls = 1000000000
[limits."op:fs:w"]
calls = 1000000000
[limits."op:mcp"]
calls = 1000000000
[store]
path = "{db}"
[audit]
path = "{db}"
"""


def pairs() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pre, post) payload pairs for every recorded tool call that has both."""
    out = []
    for pre in sorted(RECORDED.glob("*_pre.json")):
        post = next(iter(sorted(RECORDED.glob(pre.name.replace("_pre.json", "_post*.json")))), None)
        if post is not None:
            out.append((json.loads(pre.read_text()), json.loads(post.read_text())))
    return out


def calls(n: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    base = pairs()
    out = []
    for i in range(n):
        pre, post = base[i % len(base)]
        tid = f"toolu_bench_{i:06d}"
        out.append(({**pre, "tool_use_id": tid}, {**post, "tool_use_id": tid}))
    return out


def http_form(port: int, work: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    samples = []
    for pre, post in work:
        t = time.perf_counter()
        for payload in (pre, post):
            conn.request("POST", "/v1/hooks/claude-code", json.dumps(payload), headers)
            r = conn.getresponse()
            r.read()
            assert r.status == 200
        samples.append((time.perf_counter() - t) * 1000)
    conn.close()
    return samples


def command_form(
    argv: list[str], work: list[tuple[dict[str, Any], dict[str, Any]]], env: dict[str, str]
) -> list[float]:
    samples = []
    for pre, post in work:
        t = time.perf_counter()
        for payload in (pre, post):
            done = subprocess.run(
                argv, input=json.dumps(payload).encode(), capture_output=True, env=env, check=False
            )
            assert done.returncode == 0, done.stderr
        samples.append((time.perf_counter() - t) * 1000)
    return samples


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=30, help="tool calls per command form")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_cmd = 6 if args.quick else args.calls
    n_http = 20 * n_cmd
    guardpool = shutil.which("guardpool", path=str(Path(sys.executable).parent)) or "guardpool"
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "p.toml"
        policy.write_text(POLICY.format(db=Path(tmp) / "g.db"))
        env = {**os.environ, "GUARDPOOL_TOKEN": TOKEN}
        state = ["--state", str(Path(tmp) / "state")]
        with Sidecar(policy) as server:
            http_form(server.port, calls(10))  # warm-up: first requests import lazily
            http = http_form(server.port, calls(n_http))
            remote = command_form(
                [guardpool, "hook", "claude-code", "--server", server.url, *state],
                calls(n_cmd),
                env,
            )
        local = command_form(
            [guardpool, "hook", "claude-code", "--config", str(policy), *state], calls(n_cmd), env
        )
    print(f"per tool call (PreToolUse + PostToolUse), {len(pairs())} recorded tool types")
    print(f"{'form':<16}{'calls':>7}{'p50 ms':>10}{'p90 ms':>10}{'p50 / http':>12}")
    base = statistics.median(http)
    for name, samples in (("http", http), ("command+server", remote), ("command+config", local)):
        p50 = statistics.median(samples)
        p90 = pct(samples, 0.9)
        print(f"{name:<16}{len(samples):>7}{p50:>10.2f}{p90:>10.2f}{p50 / base:>11.1f}x")


if __name__ == "__main__":
    main()
