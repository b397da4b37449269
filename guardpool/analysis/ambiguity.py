"""Degree of ambiguity of a pattern's NFA, and the attack strings that exploit it.

Data flow: ``nfa.build`` -> strongly connected components of the state graph
(``nfagraph``) ->

- **EDA** (exponential degree of ambiguity): a state ``p`` with two different
  paths ``p -> p`` on the same word ``w``. Found in the product automaton
  ``A x A`` restricted to one component: a cycle from ``(p, p)`` back to
  ``(p, p)`` that leaves the diagonal (or takes one of two parallel ε-paths)
  on the way. A backtracking engine that fails after ``w^n`` tries ``2^n`` paths.
- **IDA** (polynomial degree): two different components ``C1 -> C2`` with
  states ``p in C1``, ``q in C2`` and one word ``w`` such that ``p -w-> p``,
  ``p -w-> q`` and ``q -w-> q`` (a search from ``(p, p, q)`` to ``(p, q, q)`` in
  ``A x A x A``). A chain of ``k`` components linked that way costs ``n^k`` steps
  on a failing input; ``re.search``'s implicit ``.*?`` is one of the components,
  which is why an unanchored ``\\s+$`` is quadratic.

This is the analysis of Weideman, van der Merwe, Berglund and Watson
("Analyzing matching time behavior of backtracking regular expression
matchers by using ambiguity of NFA", 2016), on CPython's own parse tree. An
ambiguity only hurts when the input can then *fail*: for each one we build
``prefix + pump^n + suffix`` and keep it only if simulating the NFA shows no
path reaching success on it (``(a+)+`` without an anchor succeeds at once and
is not reported). Timing the real engine (``confirm``) has the last word.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from guardpool.analysis.nfa import Nfa
from guardpool.analysis.nfagraph import (
    backward_of,
    forward_of,
    is_loop,
    prefix_to,
    reachable,
    sccs,
    shortest,
)

Kind = Literal["exponential", "polynomial"]
_BUDGET = 400_000  # product-automaton steps per pattern before giving up on a check


@dataclass(frozen=True)
class Attack:
    """``prefix + (pump * n + connector for each part) + suffix``."""

    prefix: str
    parts: tuple[tuple[str, str], ...]
    suffix: str

    def text(self, n: int) -> str:
        return self.prefix + "".join(p * n + c for p, c in self.parts) + self.suffix

    def show(self, n: int | None = None) -> str:
        reps = "n" if n is None else str(n)
        body = " + ".join(f"{p!r} * {reps}" + (f" + {c!r}" if c else "") for p, c in self.parts)
        pre = f"{self.prefix!r} + " if self.prefix else ""
        suf = f" + {self.suffix!r}" if self.suffix else ""
        return pre + body + suf


@dataclass(frozen=True)
class Ambiguity:
    kind: Kind
    degree: int  # loops in the chain (polynomial: time ~ n^degree); 0 when exponential
    attack: Attack


_Link = tuple[int, int, tuple[int, ...]]  # (p, q, label masks of the shared word)


class _Budget:
    def __init__(self) -> None:
        self.left = _BUDGET
        self.exhausted = False

    def spend(self, n: int = 1) -> bool:
        self.left -= n
        if self.left < 0:
            self.exhausted = True
        return not self.exhausted


def _eda(nfa: Nfa, comp: list[int], budget: _Budget) -> tuple[int, tuple[int, ...]] | None:
    """(p, pump) with two distinct p -> p paths on pump inside ``comp``, if any."""
    members = {s for s in comp if not nfa.atomic[s]}
    for p in sorted(members):
        start = (p, p, False)
        prev: dict[tuple[int, int, bool], tuple[tuple[int, int, bool], int] | None] = {start: None}
        todo = deque([start])
        while todo:
            if not budget.spend():
                return None
            x, y, div = todo.popleft()
            for x2, (mx, _rx) in nfa.edges[x].items():
                if x2 not in members:
                    continue
                lx = nfa.label(x, x2)
                for y2, (my, _ry) in nfa.edges[y].items():
                    if y2 not in members:
                        continue
                    lab = lx & nfa.label(y, y2)
                    if not lab:
                        continue
                    # Two parallel ε-paths to the same state also diverge.
                    split = div or x2 != y2 or (x == y and x2 == y2 and mx > 1 and my > 1)
                    nxt = (x2, y2, split)
                    if nxt in prev:
                        continue
                    prev[nxt] = ((x, y, div), lab)
                    if nxt == (p, p, True):
                        return p, _word(nfa, prev, nxt)
                    todo.append(nxt)
    return None


def _word(nfa: Nfa, prev: dict, node: object) -> tuple[int, ...]:  # type: ignore[type-arg]
    """The label masks along the path to ``node`` (characters chosen later)."""
    masks = []
    while prev[node] is not None:
        node, lab = prev[node]
        masks.append(lab)
    return tuple(reversed(masks))


VARIANTS = 3


def _concrete(nfa: Nfa, masks: tuple[int, ...], variant: int) -> str:
    """A word through ``masks``: 0 = least popular characters, 1 = first in the
    alphabet (printable first), 2 = second least popular."""
    out = []
    for mask in masks:
        members = [i for i in range(len(nfa.alphabet)) if mask >> i & 1]
        if variant == 1:
            out.append(nfa.alphabet[members[0]])
            continue
        ranked = sorted(members, key=lambda i: (nfa.popularity[i], i))
        out.append(nfa.alphabet[ranked[min(variant // 2, len(ranked) - 1)]])
    return "".join(out)


def _ida(
    nfa: Nfa, c1: list[int], c2: list[int], between: set[int], budget: _Budget
) -> tuple[int, int, tuple[int, ...]] | None:
    """(p, q, w) with p -w-> p in c1, p -w-> q, q -w-> q in c2, if any."""
    m1 = {s for s in c1 if not nfa.atomic[s]}
    m2 = {s for s in c2 if not nfa.atomic[s]}
    for p in sorted(m1):
        for q in sorted(m2):
            start = (p, p, q)
            goal = (p, q, q)
            prev: dict[tuple[int, int, int], tuple[tuple[int, int, int], int] | None] = {
                start: None
            }
            todo = deque([start])
            while todo:
                if not budget.spend():
                    return None
                x, y, z = todo.popleft()
                for x2 in nfa.edges[x]:
                    if x2 not in m1:
                        continue
                    lx = nfa.label(x, x2)
                    for y2 in nfa.edges[y]:
                        if y2 not in between:
                            continue
                        lxy = lx & nfa.label(y, y2)
                        if not lxy:
                            continue
                        for z2 in nfa.edges[z]:
                            if z2 not in m2:
                                continue
                            lab = lxy & nfa.label(z, z2)
                            if not lab:
                                continue
                            nxt = (x2, y2, z2)
                            if nxt in prev:
                                continue
                            prev[nxt] = ((x, y, z), lab)
                            if nxt == goal:
                                return p, q, _word(nfa, prev, nxt)
                            todo.append(nxt)
    return None


def _attempt_succeeds(nfa: Nfa, text: str, begin: int) -> bool:
    """Does the match attempt that starts at ``begin`` reach success on any path?"""
    pos = {ch: i for i, ch in enumerate(nfa.alphabet)}
    # After position 0, an attempt starts where the implicit .*? hands over.
    if begin == 0 or nfa.loop is None:
        first = nfa.start
    elif nfa.loop_nl is not None and text[begin - 1] == "\n":
        first = nfa.loop_nl
    else:
        first = nfa.loop
    loops = set(nfa.loops)
    current = {first}
    for i in range(begin, len(text) + 1):
        nxt = text[i] if i < len(text) else None
        for s in current:
            kind = nfa.final[s]
            if kind == "any" or (kind == "end" and nxt is None):
                return True
            if kind == "nl" and (nxt is None or nxt == "\n"):
                return True
        if nxt is None or not current:
            return False
        bit = 1 << pos[nxt]
        current = {
            t for s in current for t in nfa.edges[s] if t not in loops and nfa.label(s, t) & bit
        }
    return False


def _fails(nfa: Nfa, attack: Attack, k: int, from_loop: bool) -> bool:
    """Do the attempts that do the ambiguous work fail on ``attack.text(k)``?

    ``re.search`` tries start positions in order and stops at the first success,
    so a later success (``\\s*$`` matches at the very end) comes too late to
    help: only the attempt at 0 matters, or, when the chain begins with the
    implicit ``.*?``, every attempt that starts inside the first pumped block.
    """
    text = attack.text(k)
    last = len(attack.prefix) + len(attack.parts[0][0]) * k if from_loop else 0
    return not any(_attempt_succeeds(nfa, text, b) for b in range(0, min(last, len(text)) + 1))


def _failing(
    nfa: Nfa, prefix: str, parts: tuple[tuple[str, str], ...], from_loop: bool = False
) -> Attack | None:
    """The attack with a suffix that makes every path fail, if one exists."""
    used = {c for p, c2 in parts for c in p + c2}
    pump_mask = sum(1 << i for i, ch in enumerate(nfa.alphabet) if ch in used)
    candidates = [""] + [ch for i, ch in enumerate(nfa.alphabet) if not pump_mask >> i & 1]
    candidates += [ch for i, ch in enumerate(nfa.alphabet) if pump_mask >> i & 1]
    for suffix in candidates[:80]:
        attack = Attack(prefix, parts, suffix)
        if all(_fails(nfa, attack, k, from_loop) for k in (2, 3, 4)):
            return attack
    return None


def analyse_nfa(nfa: Nfa) -> tuple[list[Ambiguity], bool]:
    """Ambiguities worth attacking, worst first, and whether the budget ran out."""
    budget = _Budget()
    reach = reachable(nfa)
    comps = [c for c in sccs(nfa, reach) if is_loop(nfa, c)]
    found: list[Ambiguity] = []
    for comp in comps:
        hit = _eda(nfa, comp, budget)
        if hit is None:
            continue
        p, masks = hit
        prefix = prefix_to(nfa, p, reach)
        if prefix is None:
            continue
        for variant in range(VARIANTS):
            pump = _concrete(nfa, masks, variant)
            attack = _failing(nfa, prefix, ((pump, ""),), p in nfa.loops)
            if attack is not None:
                found.append(Ambiguity("exponential", 0, attack))
                break
    found.extend(_chains(nfa, comps, reach, budget))
    found.sort(key=lambda a: (a.kind != "exponential", -a.degree))
    return found, budget.exhausted


def _chains(nfa: Nfa, comps: list[list[int]], reach: set[int], budget: _Budget) -> list[Ambiguity]:
    """The longest IDA chain (degree >= 2) with a failing attack, if any."""
    # comps come in reverse topological order: successors have lower indices.
    order = list(reversed(range(len(comps))))
    forward = {i: forward_of(nfa, comps[i]) for i in order}
    backward = {i: backward_of(nfa, comps[i], reach) for i in order}
    best: dict[int, tuple[int, list[_Link]]] = {i: (1, []) for i in order}
    for i in order:
        for j in order:
            if j == i or comps[j][0] not in forward[i]:
                continue
            if best[i][0] + 1 <= best[j][0]:
                continue
            between = forward[i] & backward[j]
            link = _ida(nfa, comps[i], comps[j], between, budget)
            if link is not None:
                best[j] = (best[i][0] + 1, [*best[i][1], link])
    out: list[Ambiguity] = []
    for _i, (degree, links) in sorted(best.items(), key=lambda kv: -kv[1][0]):
        if degree < 2:
            break
        attack = None
        for variant in range(VARIANTS):
            attack = _chain_attack(nfa, comps, links, reach, variant)
            if attack is not None:
                break
        if attack is not None:
            out.append(Ambiguity("polynomial", degree, attack))
            break
    return out


def _chain_attack(
    nfa: Nfa,
    comps: list[list[int]],
    links: list[tuple[int, int, tuple[int, ...]]],
    reach: set[int],
    variant: int,
) -> Attack | None:
    prefix = prefix_to(nfa, links[0][0], reach)
    if prefix is None:
        return None
    from_loop = links[0][0] in nfa.loops
    parts: list[tuple[str, str]] = []
    for k, (_p, q, masks) in enumerate(links):
        w = _concrete(nfa, masks, variant)
        connector = ""
        if k + 1 < len(links):
            nxt = links[k + 1][0]
            comp = next(c for c in comps if q in c)
            found = shortest(nfa, q, nxt, set(comp))
            if found is None:
                return None
            connector = found
        parts.append((w, connector))
    # One pump for the whole chain when one word serves every link — one of the
    # links' words, or all of them in a row ('Mozilla' + 'Mobile ' for
    # Mozilla.*Mobile.*X under re.search: each repetition adds a start position
    # *and* a split point): w^n, not w1^n w2^n.
    words = [w for w, _ in parts]
    if len(parts) > 1 and all(not c for _, c in parts[:-1]):
        pairs_ = [(p, q) for p, q, _ in links]
        for w in [*sorted(set(words), key=len), "".join(words)]:
            if _pumps_every_link(nfa, pairs_, w):
                uniform = _failing(nfa, prefix, ((w, ""),), from_loop)
                if uniform is not None:
                    return uniform
    if len(set(words)) == 1 and all(not c for _, c in parts):
        return _failing(nfa, prefix, ((words[0], ""),), from_loop)
    return _failing(nfa, prefix, tuple(parts), from_loop)


def _pumps_every_link(nfa: Nfa, links: list[tuple[int, int]], w: str) -> bool:
    """Does ``w`` loop on both ends of every link and lead from one to the other?"""
    pos = {ch: i for i, ch in enumerate(nfa.alphabet)}

    def after(state: int) -> set[int]:
        current = {state}
        for ch in w:
            bit = 1 << pos[ch]
            current = {t for s in current for t in nfa.edges[s] if nfa.label(s, t) & bit}
        return current

    return all(p in (reach := after(p)) and q in reach and q in after(q) for p, q in links)
