"""Walks over an ``Nfa``'s state graph, for ``ambiguity``.

Reachable states, strongly connected components (the loops the ambiguity
search looks in), the states before and after a component, and shortest words
between states (an attack's prefix and its connectors). Plain graph work on
``Nfa.edges`` and ``Nfa.label``, kept apart so that ``ambiguity`` reads as the
EDA/IDA search and the attack built on what it finds.
"""

from __future__ import annotations

from collections import deque

from guardpool.analysis.nfa import Nfa


def reachable(nfa: Nfa) -> set[int]:
    """The states a word can reach from the start."""
    return forward_of(nfa, [nfa.start])


def sccs(nfa: Nfa, states: set[int]) -> list[list[int]]:
    """Tarjan's algorithm, iterative; components in reverse topological order."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on: set[int] = set()
    out: list[list[int]] = []
    counter = 0
    for root in sorted(states):
        if root in index:
            continue
        work = [(root, iter(sorted(nfa.edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in states or not nfa.label(v, w):
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(nfa.edges[w]))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
    return out


def is_loop(nfa: Nfa, comp: list[int]) -> bool:
    members = set(comp)
    return len(comp) > 1 or any(t in members for t in nfa.edges[comp[0]])


def _pick(nfa: Nfa, mask: int, avoid: int = 0) -> str:
    """A representative character of ``mask``, preferring ones outside ``avoid``."""
    preferred = mask & ~avoid or mask
    for i, ch in enumerate(nfa.alphabet):
        if preferred >> i & 1:
            return ch
    raise ValueError("empty mask")


def shortest(nfa: Nfa, src: int, dst: int, allowed: set[int] | None) -> str | None:
    """Shortest word from src to dst, through ``allowed`` states only (None: any)."""
    if src == dst:
        return ""
    prev: dict[int, tuple[int, int]] = {src: (-1, 0)}
    todo = deque([src])
    while todo:
        s = todo.popleft()
        for t in nfa.edges[s]:
            if t in prev or (allowed is not None and t not in allowed):
                continue
            lab = nfa.label(s, t)
            if not lab:
                continue
            prev[t] = (s, lab)
            if t == dst:
                word = []
                cur = t
                while cur != src:
                    p, m = prev[cur]
                    word.append(_pick(nfa, m))
                    cur = p
                return "".join(reversed(word))
            todo.append(t)
    return None


def prefix_to(nfa: Nfa, target: int, reach: set[int]) -> str | None:
    if target in nfa.loops:
        return ""
    without_loop = reach - set(nfa.loops)
    word = shortest(nfa, nfa.start, target, without_loop)
    return word if word is not None else shortest(nfa, nfa.start, target, reach)


def forward_of(nfa: Nfa, comp: list[int]) -> set[int]:
    """The states reachable from ``comp`` (``comp`` included)."""
    seen = set(comp)
    todo = list(comp)
    while todo:
        s = todo.pop()
        for t in nfa.edges[s]:
            if t not in seen and nfa.label(s, t):
                seen.add(t)
                todo.append(t)
    return seen


def backward_of(nfa: Nfa, comp: list[int], reach: set[int]) -> set[int]:
    rev: dict[int, list[int]] = {}
    for s in reach:
        for t in nfa.edges[s]:
            if nfa.label(s, t):
                rev.setdefault(t, []).append(s)
    seen = set(comp)
    todo = list(comp)
    while todo:
        s = todo.pop()
        for t in rev.get(s, []):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen
