"""RE2 banks against Python re: realistic throughput and adversarial scaling.

    python bench/bench_regex.py [--quick]

1. A bank of 100 realistic patterns (credentials, PII, prompt-injection phrases)
   on 1 MB of text: one RE2 Set pass (guardpool's RegexBank) vs a loop of
   Python ``re.search`` over the same patterns. Goal: RE2 <= 0.2x re.
2. ``(a+)+$`` on ``"a" * n + "!"``: RE2 for n = 10 ... 10**6 (linear), Python re
   for small n only, each run in a subprocess killed at a cap.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guardpool.policy.regex import RegexBank, compile_pattern

BASE = [
    r"AKIA[0-9A-Z]{16}",
    r"ASIA[0-9A-Z]{16}",
    r"aws_secret_access_key\s*=\s*[A-Za-z0-9/+=]{40}",
    r"AIza[0-9A-Za-z_\-]{35}",
    r"ya29\.[0-9A-Za-z_\-]+",
    r"gh[pousr]_[A-Za-z0-9]{36}",
    r"github_pat_[A-Za-z0-9_]{82}",
    r"xox[baprs]-[A-Za-z0-9-]{10,48}",
    r"sk-[A-Za-z0-9]{48}",
    r"sk_live_[0-9a-zA-Z]{24}",
    r"rk_live_[0-9a-zA-Z]{24}",
    r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"-----BEGIN OPENSSH PRIVATE KEY-----",
    r"eyJ[A-Za-z0-9_\-]+\.eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+",
    r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}",
    r"\b\d{3}-\d{2}-\d{4}\b",
    r"\b(?:\d[ -]*?){13,16}\b",
    r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b",
    r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
    r"\+?\d{1,3}[ .\-]?\(?\d{3}\)?[ .\-]?\d{3}[ .\-]?\d{4}",
    r"(?i)ignore (all |any )?(previous|prior|above) instructions",
    r"(?i)disregard (the |your )?(system|previous) prompt",
    r"(?i)you are now (in )?developer mode",
    r"(?i)reveal (your|the) system prompt",
    r"(?i)pretend (you are|to be) (?:an? )?unrestricted",
    r"(?i)\bjailbreak\b",
    r"(?i)do anything now",
    r"(?i)base64 -d \| (ba)?sh",
    r"curl [^|]+\| *(ba)?sh",
    r"(?i)rm -rf /",
    r"(?i)drop table \w+",
]


def bank_patterns() -> list[str]:
    # 100 patterns: the base set plus keyword variants, as real policies grow.
    words = [
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "bearer",
        "session",
        "cookie",
        "private",
        "credential",
        "ssh-rsa",
        "mnemonic",
        "seed phrase",
    ]
    out = list(BASE)
    i = 0
    while len(out) < 100:
        w = words[i % len(words)]
        out.append(rf"(?i){re.escape(w)}\s*[:=]\s*\S{{{8 + i % 12},}}")
        i += 1
    return out


def text(size: int) -> str:
    rng = random.Random(1)
    vocab = (
        "the",
        "agent",
        "called",
        "the",
        "tool",
        "with",
        "arguments",
        "and",
        "received",
        "a",
        "response",
        "from",
        "the",
        "service",
        "about",
        "the",
        "quarterly",
        "report",
        "user",
        "id",
        "order",
        "number",
        "shipment",
        "status",
    )
    chunks, n = [], 0
    while n < size:
        w = rng.choice(vocab)
        chunks.append(w)
        n += len(w) + 1
    return " ".join(chunks)[:size]


def best_of(fn: object, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


_RE_PROBE = (
    "import re, sys, time; t = time.perf_counter(); "
    "re.search(r'(a+)+$', 'a' * int(sys.argv[1]) + '!'); print(time.perf_counter() - t)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    runs = (
        2
        if parser.add_argument("--quick", action="store_true") and parser.parse_args().quick
        else 5
    )
    patterns = bank_patterns()
    data = text(1 << 20)
    raw = data.encode()
    bank = RegexBank(patterns)
    compiled = [re.compile(p) for p in patterns]
    t_re2 = best_of(lambda: bank.first_match(raw), runs)
    t_re = best_of(lambda: [c.search(data) for c in compiled], runs)
    print(f"100 patterns on 1 MiB of text (best of {runs})")
    print(f"  RE2 Set, one pass   {t_re2 * 1000:9.2f} ms")
    print(f"  Python re, loop     {t_re * 1000:9.2f} ms")
    print(f"  ratio RE2/re        {t_re2 / t_re:9.3f}x   (goal <= 0.2x)")
    print()
    print("(a+)+$ on 'a'*n + '!'")
    print(f"{'n':>9}{'RE2 ms':>12}{'re ms':>14}")
    one = compile_pattern(r"(a+)+$")
    for n in (10, 16, 20, 24, 28, 100, 10_000, 1_000_000):
        s = "a" * n + "!"
        t2 = best_of(lambda s=s: one.search(s), 3) * 1000
        if n <= 28:
            try:
                out = subprocess.run(
                    [sys.executable, "-c", _RE_PROBE, str(n)],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                )
                tre = f"{float(out.stdout) * 1000:14.2f}"
            except subprocess.TimeoutExpired:
                tre = f"{'> 5000 (killed)':>14}"
        else:
            tre = f"{'not attempted':>14}"
        print(f"{n:>9}{t2:12.3f}{tre}")


if __name__ == "__main__":
    main()
