"""Adversarial inputs for a guard, derived from the patterns it uses.

Generators, cheapest first:

- **pumping strings** from each ReDoS finding (``pump * n + failer``) at growing n;
- **literal runs**: every literal character of the guard's patterns, repeated
  and followed by a character the pattern does not expect;
- **Unicode edge cases** (``EDGE_CASES``) and **random Unicode**, including
  astral characters and lone surrogates;
- **size**: an input of exactly ``max_input_bytes``;
- **invalid UTF-8** bytes.

The functions the commands run inside workers are in ``probes``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

from guardpool.analysis.redos import analyse

_FAILERS = "!\x00~"

# Text that trips naive handling of Unicode: zero-width and bidi controls, combining
# marks, a BOM, NUL, CR/LF, astral characters, a lone surrogate, case folding
# that changes length, and a digit that is not ASCII.
EDGE_CASES: tuple[str, ...] = (
    "",
    "\x00",
    "\ufeffhello",
    "a\u200bb\u200dc\u2060d",
    "\u202eexe.txt",
    "e\u0301" * 64,
    "\r\n" * 64,
    "\U0001f600" * 256,
    "\ud800",
    "x\udfffy",
    "\u0130\u00df\ufb03" * 32,
    "\u0663\u0664",
    "\u3000\u00a0\u2028\u2029",
)


def literal_chars(pattern: str) -> list[str]:
    """Printable literal characters appearing in a pattern's parse tree."""
    from guardpool.analysis.redos import C, P

    try:
        tree = P.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return []
    found: list[str] = []

    def walk(items: Any) -> None:
        for op, av in items:
            if op == C.LITERAL and chr(av).isprintable() and chr(av) not in found:
                found.append(chr(av))
            elif op == C.IN:  # a class, or an alternation of single characters
                walk([item for item in av if item[0] == C.LITERAL])
            elif op == C.SUBPATTERN:
                walk(av[-1])
            elif op == C.BRANCH:
                for b in av[1]:
                    walk(b)
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
                walk(av[2])

    walk(tree)
    return found


def random_unicode(rng: random.Random, length: int) -> str:
    pools = (
        (0x20, 0x7E),  # ASCII
        (0xA0, 0x24F),  # Latin
        (0x400, 0x4FF),  # Cyrillic
        (0x4E00, 0x4FFF),  # CJK
        (0x1F300, 0x1F5FF),  # emoji (astral)
    )
    chars = []
    for _ in range(length):
        lo, hi = rng.choice(pools)
        chars.append(chr(rng.randint(lo, hi)))
    if rng.random() < 0.2:
        chars.insert(rng.randrange(len(chars) + 1), "\ud800")  # a lone surrogate
    return "".join(chars)


def inputs(
    patterns: Sequence[str], max_input_bytes: int, seed: int = 0
) -> Iterator[tuple[str, str | bytes]]:
    """(generator name, input) pairs, endlessly; the structured ones come first."""
    rng = random.Random(seed)
    for pattern in patterns:
        for finding in analyse(pattern):
            for n in (8, 16, 24, 28, 32, 64, 1000, 20_000):
                yield "pump", finding.attack(n)
        for ch in literal_chars(pattern):
            for n in (100, 10_000):
                for failer in _FAILERS:
                    yield "literal-run", ch * n + failer
    for text in EDGE_CASES:
        yield "unicode-edge", text
    yield "max-size", "a" * max_input_bytes  # the input contract: the pool caps the same size
    yield "invalid-utf8", b"\xff\xfe" + bytes(rng.randrange(256) for _ in range(64))
    while True:
        kind = rng.random()
        if kind < 0.6:
            yield "random-unicode", random_unicode(rng, rng.choice((8, 64, 512, 4096)))
        elif kind < 0.8:
            yield "invalid-utf8", bytes(rng.randrange(256) for _ in range(rng.choice((16, 256))))
        elif patterns:
            finding_patterns = [p for p in patterns if analyse(p)]
            source = rng.choice(finding_patterns or list(patterns))
            chars = literal_chars(source) or ["a"]
            yield "literal-run", rng.choice(chars) * rng.randint(10, 5000) + rng.choice(_FAILERS)
        else:
            yield "random-unicode", random_unicode(rng, 32)
