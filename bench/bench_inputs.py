"""The input handling of one check: the input contract against the measures it replaced.

    python bench/bench_inputs.py [--rounds N]

One check with 2 RE2 banks and 1 callable guard touches its input five times:
the size cap, the ledger digest, each bank's bytes and the pool's msgpack.

* baseline (the code before policy/inputs.py, reimplemented here): the enforcer
  encoded UTF-8 (or unsorted JSON) for the size, the ledger encoded again
  (sorted JSON) for the digest, each bank encoded again, the pool encoded msgpack
  and capped its length;
* contract: ``inputs.measure`` once (bytes, size), the digest of those bytes, the
  banks reuse them, the pool packs the value and takes the measured size.

Only the encoding and hashing are timed (no regex, no pool round trip). Rounds
alternate the variants and medians are printed with their ratio, so a busy
machine disturbs both alike.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guardpool.policy import inputs

BANKS = 2
_msgpack = msgspec.msgpack.Encoder()
_sorted_json = msgspec.json.Encoder(order="sorted")


def baseline(value: Any) -> int:
    def utf8_or_json(sort: bool) -> bytes:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass")
        return _sorted_json.encode(value) if sort else msgspec.json.encode(value)

    size = len(utf8_or_json(sort=False))  # the enforcer's cap
    hashlib.sha256(utf8_or_json(sort=True)).hexdigest()  # the ledger
    for _ in range(BANKS):
        utf8_or_json(sort=True)  # each bank
    return size + len(_msgpack.encode(value))  # the pool, capped on its own length


def contract(value: Any) -> int:
    measured = inputs.measure(value)
    _ = measured.digest  # the ledger
    for _ in range(BANKS):
        _ = measured.data  # each bank scans the same bytes
    return measured.size + len(inputs.pack(_msgpack, measured.value))


CASES: dict[str, Any] = {
    "64 KiB ASCII text": "a" * 65536,
    "64 KiB non-ASCII text": "é" * 32768,
    "~64 KiB of chat messages": {
        "messages": [{"role": "user", "content": "x" * 60, "n": i} for i in range(800)]
    },
}


def per_call_us(fn: Callable[[Any], int], value: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn(value)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"{'input':28} {'baseline':>12} {'contract':>12} {'ratio':>7}")
    for name, value in CASES.items():
        old: list[float] = []
        new: list[float] = []
        for _ in range(args.rounds):
            old.append(per_call_us(baseline, value, 300))
            new.append(per_call_us(contract, value, 300))
        o, n = statistics.median(old), statistics.median(new)
        print(f"{name:28} {o:9.1f} us {n:9.1f} us {n / o:6.2f}x")


if __name__ == "__main__":
    main()
