"""HTTP check round trip against the in-process check(), measured in one run.

    python bench/bench_server.py [--quick] [--callable]

Starts ``guardpool serve`` on a free loopback port with a policy of 2 regex
banks and 1 limit on the sqlite store, and measures p50/p99 and requests per
second at 1 and 16 concurrent clients (threads, each with a keep-alive
http.client connection),
beside ``run.check()`` called in-process on the same policy. Goal: HTTP p50
<= 1 ms at 1 client.

``--callable`` adds a callable guard (a pool job per check, 2 workers) and
measures 1, 2, 4, 8 and 16 clients: whether more requests at once than workers
lose throughput (the server runs each check in a thread of its own).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guardpool import Enforcer, Operation
from tests.sidecar import TOKEN, Sidecar

POLICY = """
[[guard]]
name = "keys"
deny_regex = ['AKIA[0-9A-Z]{{16}}', '-----BEGIN [A-Z ]*PRIVATE KEY-----']
[[guard]]
name = "injection"
deny_regex = ['(?i)ignore (all )?previous instructions']
[limits."exe:llm:*"]
calls = 1000000000
scope = "global"
[store]
path = "{db}"
[audit]
path = "{db}"
"""
CALLABLE = """
[[guard]]
name = "callable"
call = "examples.bench_guards:allow"
[pool]
workers = 2
"""
BODY = {"labels": ["exe:llm:gpt-4o"], "input": "summarise this report " * 40, "run_id": "b"}


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def http_load(url: str, clients: int, per_client: int) -> tuple[list[float], float]:
    samples: list[float] = []
    lock = threading.Lock()

    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(BODY).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def worker() -> None:
        local = []
        # http.client with keep-alive: a light client, so the figure is the server's.
        conn = http.client.HTTPConnection(host, int(port))
        for _ in range(per_client):
            t = time.perf_counter()
            conn.request("POST", "/v1/check", body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            local.append((time.perf_counter() - t) * 1000)
            assert r.status == 200
        conn.close()
        with lock:
            samples.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, clients * per_client / (time.perf_counter() - start)


def concurrency(policy: Path, n: int) -> None:
    with Sidecar(policy) as server:
        http_load(server.url, 1, 100)  # warm up
        head = "policy with a callable guard, 2 workers"
        print(f"{head:44}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
        for clients in (1, 2, 4, 8, 16):
            s, rps = http_load(server.url, clients, max(20, n // clients))
            name = f"HTTP, {clients} client{'s' if clients > 1 else ''}"
            print(f"{name:44}{statistics.median(s):9.3f}{pct(s, 0.99):9.3f}{rps:9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--callable", action="store_true", help="add a callable guard; 1-16 clients"
    )
    args = parser.parse_args()
    n = 300 if args.quick else 2000
    with tempfile.TemporaryDirectory() as d:
        policy = Path(d) / "p.toml"
        policy.write_text(POLICY.format(db=Path(d) / "g.db") + (CALLABLE if args.callable else ""))
        if args.callable:
            concurrency(policy, n)
            return
        op = Operation(labels=tuple(BODY["labels"]), input=BODY["input"])
        with Enforcer.from_config(policy) as e:
            run = e.run("inproc")
            for _ in range(100):
                run.check(op)
            inproc = []
            start = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                run.check(op)
                inproc.append((time.perf_counter() - t) * 1000)
            inproc_rps = n / (time.perf_counter() - start)
        # The same real `guardpool serve` the integration tests start (tests/sidecar.py).
        with Sidecar(policy) as server:
            http_load(server.url, 1, 100)  # warm up
            one, one_rps = http_load(server.url, 1, n)
            many, many_rps = http_load(server.url, 16, max(20, n // 16))
    print(f"{'':28}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    print(
        f"{'in-process run.check()':28}{statistics.median(inproc):9.3f}{pct(inproc, 0.99):9.3f}"
        f"{inproc_rps:9.0f}"
    )
    print(f"{'HTTP, 1 client':28}{statistics.median(one):9.3f}{pct(one, 0.99):9.3f}{one_rps:9.0f}")
    print(
        f"{'HTTP, 16 clients':28}{statistics.median(many):9.3f}{pct(many, 0.99):9.3f}"
        f"{many_rps:9.0f}"
    )
    print(
        f"ratio HTTP(1 client)/in-process p50: "
        f"{statistics.median(one) / statistics.median(inproc):.2f}x; goal: HTTP p50 <= 1 ms"
    )


if __name__ == "__main__":
    main()
