"""Label tests/redos_corpus.py by timing CPython's re: writes tests/data/redos_labels.json.

For every entry, every attack we know is timed with the entry's own call style
(``guardpool.analysis.confirm``: a child process per attack, growing pump
counts, CPU time, a deadline): the attack published with the advisory, the
paired pattern's, regexploit's (when it is installed) and guardpool's own.
An entry is *vulnerable* when any attack shows exponential growth or growth of
degree >= 3; the attack that showed it is stored so the test suite can re-time
it without any analyser. Run it after editing the corpus:

    .venv/bin/python bench/label_redos_corpus.py
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardpool.analysis.ambiguity import Attack  # noqa: E402
from guardpool.analysis.confirm import Confirmation, confirm  # noqa: E402
from guardpool.analysis.redos import analyse  # noqa: E402
from tests.redos_corpus import ENTRIES, pairs  # noqa: E402

OUT = ROOT / "tests" / "data" / "redos_labels.json"


def regexploit_attacks(pattern: str, flags: int) -> list[Attack]:
    """regexploit's own example attack strings, as Attacks (empty when not installed)."""
    try:
        from regexploit.ast.sre import SreOpParser
        from regexploit.redos import find
    except ImportError:
        return []
    try:
        found = [r for r in find(SreOpParser().parse_sre(pattern, flags)) if r.starriness > 2]
    except Exception:
        return []
    out = []
    for r in found[:2]:
        try:  # as regexploit's Redos.example() builds it
            rep, killer = r.repeated_character, r.killer
            if killer and (both := rep & killer):
                rep, killer = both, None
            pump = rep.example()
            prefix = r.example_prefix or ""
            suffix = killer.example() if killer is not None else ""
        except Exception:
            continue
        out.append(Attack(prefix, ((pump, ""),), suffix))
    return out


def candidates(
    entry: tuple[Any, ...], by_id: dict[str, tuple[Any, ...]]
) -> list[tuple[str, Attack]]:
    ident, pattern, flags, call, _source, published = entry
    out: list[tuple[str, Attack]] = []
    if published:
        pre, pump, suf = published
        out.append(("published", Attack(pre, ((pump, ""),), suf)))
    partner = pairs().get(ident)
    if partner and by_id[partner][5]:
        pre, pump, suf = by_id[partner][5]
        out.append(("partner's published", Attack(pre, ((pump, ""),), suf)))
    # Independent attacks first, so that the stored one is guardpool's only when
    # nothing else showed the slowness.
    for a in regexploit_attacks(pattern, flags):
        out.append(("regexploit", a))
    for f in analyse(pattern, flags, call)[:2]:
        out.append(("guardpool", f.plan))
    if partner:
        p = by_id[partner]
        for f in analyse(p[1], p[2], p[3])[:1]:
            out.append(("partner's guardpool", f.plan))
    return out


def label(entry: tuple[Any, ...], by_id: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    _ident, pattern, flags, call, source, _ = entry
    tried = candidates(entry, by_id)
    best: tuple[str, Confirmation] | None = None
    for who, attack in tried:
        for exponential in (True, False):
            c = confirm(pattern, attack, flags=flags, call=call, exponential=exponential,
                        deadline_s=4.0, stop_s=0.3)
            if c.confirmed:
                best = (who, c)
                break
        if best:
            break
    doc: dict[str, Any] = {"source": source, "attacks_tried": [w for w, _ in tried]}
    if best is None:
        doc["label"] = "safe"
        return doc
    who, c = best
    doc |= {
        "label": "vulnerable",
        "growth": c.growth,
        "degree": c.degree,
        "attack": [c.attack.prefix, [list(p) for p in c.attack.parts], c.attack.suffix],
        "attack_by": who,
        "measured": c.describe(),
    }
    return doc


def main() -> None:
    by_id = {e[0]: e for e in ENTRIES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        docs = list(pool.map(lambda e: label(e, by_id), ENTRIES))
    labels = {e[0]: d for e, d in zip(ENTRIES, docs, strict=True)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(labels, indent=1, ensure_ascii=True, sort_keys=True) + "\n")
    vulnerable = sum(d["label"] == "vulnerable" for d in labels.values())
    safe = len(labels) - vulnerable
    print(f"{len(labels)} entries: {vulnerable} vulnerable, {safe} safe -> {OUT}")
    for ident, d in labels.items():
        print(f"{d['label']:10} {ident:32} {d.get('measured', '')[:90]}")


if __name__ == "__main__":
    main()
