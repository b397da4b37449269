"""The atheris harnesses, exercised in ``make test`` on generated inputs (no fuzzing engine).

``make fuzz`` runs them under atheris for real; here every harness must survive
a bounded set of structured and random inputs, so the harness code itself is
tested and a regression in the code under test shows up in CI.
"""

from __future__ import annotations

import random

import msgspec
import pytest

from fuzz import harness_config, harness_protocol
from guardpool.worker import protocol


def _corpus(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    seeds = [
        b"",
        b"[pool]\nworkers = 2\n",
        b'{"limits": {"x": {"calls": 1}}}',
        b"\xff\xfe\x00",
        b'[[guard]]\nname = "a"\ndeny_regex = ["(a)\\\\1"]\n',
        b'[limits."*"]\ncost = 1.5\n',
        msgspec.msgpack.encode(
            protocol.CallJob(id=1, target="m:f", input="x", cpu_ms=10, deadline=1.0)
        ),
    ]
    out = list(seeds)
    for _ in range(n):
        base = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            if base and rng.random() < 0.6:
                base[rng.randrange(len(base))] = rng.randrange(256)
            else:
                base.insert(rng.randrange(len(base) + 1), rng.randrange(256))
        out.append(bytes(base))
    return out


@pytest.mark.parametrize("harness", [harness_config, harness_protocol])
def test_harness_survives_mutated_inputs(harness: object) -> None:
    for data in _corpus(seed=7, n=300):
        harness.TestOneInput(data)  # type: ignore[attr-defined]
