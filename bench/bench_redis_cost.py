"""Redis server work per step, counted in instructions instead of seconds.

    python bench/bench_redis_cost.py [--pairs N]

Wall-clock rates on a shared machine move by ±30% from run to run. Instructions
do not: this script runs a redis-server under valgrind's callgrind, sends it N
reserve+settle pairs from guardpool's Redis store (the bench_store.py items: 2
limits × 3 dimensions) and N moving-window hits from the ``limits`` library,
and prints the server's instructions per pair and per hit, in total and inside
the script command (FCALL for guardpool, EVALSHA for limits). It measures the
server only; a step's wall time also holds the client's CPU and the round trip.
Needs valgrind (``apt-get install valgrind``) and redis-server.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import limits
import redis
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from bench.bench_store import items
from guardpool.policy.config import StoreConfig
from guardpool.store import open_store
from tests.conftest import free_port


def ours(url: str, n: int) -> Callable[[], None]:
    store = open_store(
        StoreConfig(backend="redis", url=url, op_timeout_ms=60_000, connect_timeout_ms=60_000)
    )
    its = items("h")
    for i in range(20):  # warm-up: the function library is loaded, the keys exist
        store.reserve(f"w{i}", its, 60_000)
        store.settle(f"w{i}", {"tokens": 900, "cost": 2250})

    def run() -> None:
        for i in range(n):
            store.reserve(f"h{i}", its, 60_000)
            store.settle(f"h{i}", {"tokens": 900, "cost": 2250})

    return run


def theirs(url: str, n: int) -> Callable[[], None]:
    limiter = MovingWindowRateLimiter(storage_from_string(url + "?socket_timeout=60"))
    item = limits.parse("1000000000/hour")
    for _ in range(20):
        limiter.hit(item, "h")

    def run() -> None:
        for _ in range(n):
            limiter.hit(item, "h")

    return run


def inclusive(annotated: str, function: str) -> int:
    m = re.search(r"^\s*([\d,]+) \([\d.]+%\)\s+\S*:" + function + " ", annotated, re.M)
    return int(m.group(1).replace(",", "")) if m else 0


def measure(pid: int, out: Path, run: Callable[[], None], dump: int) -> str:
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    run()
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    path = Path(f"{out}.{dump}")
    for _ in range(100):
        if path.exists() and path.stat().st_size:
            break
        time.sleep(0.1)
    return subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=300)
    n = parser.parse_args().pairs
    if not (shutil.which("valgrind") and shutil.which("redis-server")):
        sys.exit("needs valgrind and redis-server on PATH")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        server = subprocess.Popen(
            [*valgrind, "redis-server", *options, "--dir", d],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            results = {}
            sides = (
                ("guardpool pair", "fcallCommand", ours),
                ("limits hit", "evalShaCommand", theirs),
            )
            for dump, (name, command, make) in enumerate(sides, start=1):
                annotated = measure(server.pid, out, make(url, n), dump)
                total = int(re.search(r"([\d,]+) \(100.0%\)", annotated).group(1).replace(",", ""))
                results[name] = (total / n, inclusive(annotated, command) / n)
        finally:
            redis.Redis.from_url(url).shutdown(nosave=True)
            server.wait()
    print(f"redis-server instructions (callgrind), {n} of each")
    for name, (total, script) in results.items():
        print(f"{name:16} {total:10,.0f} in total {script:10,.0f} in the script command")
    pair, hit = results["guardpool pair"][0], results["limits hit"][0]
    print(f"a pair costs the server {pair / hit:.1f} limits hits ({pair / hit / 2:.1f} per step)")


if __name__ == "__main__":
    main()
