"""A Python ``re`` pattern as an ε-free NFA over a finite alphabet, for ambiguity analysis.

Data flow: ``re._parser.parse`` (Python's own parser, so every construct ``re``
accepts is understood, flags included) -> a Thompson automaton with ε-edges
that carry zero-width assertions (``thompson``) -> ε-elimination into a
*multigraph* of character-consuming states (Glushkov style: a state is "the
character at this place of the pattern was just consumed"). The number of
distinct ε-paths between two states is kept (capped at 2), because a
backtracking engine tries each of them: ``(a*)*`` has one position but two
ways to loop, and that is exactly what makes it exponential.

Characters are sets over a finite alphabet of representatives (bit ``i`` of a
mask is ``alphabet[i]``): printable ASCII, the usual whitespace, a few
non-ASCII letters, digits and spaces (Python's ``\\w``/``\\d``/``\\s`` are
Unicode), and every literal and range endpoint of the pattern. A class's mask
is computed by asking the real ``re`` engine (``re._compiler`` on the single
parse-tree item, with the flags in force there), so ``(?i)``, ``(?a)``,
``(?s)`` and class intersections mean what CPython means.

What is approximated, always in the direction of *more* ambiguity (the
confirmer decides what is real): lookarounds and ``\\b``/``\\B`` are taken as
always passing; a backreference ``\\N`` is replaced by a copy of group N's
sub-pattern (equality not enforced); a conditional ``(?(N)a|b)`` by ``a|b``;
a bounded repeat whose upper bound exceeds ``thompson.EXPAND_LIMIT`` by an
unbounded one. Atomic groups and possessive repeats are marked so that the
analysis does not count splits inside them. Each approximation is recorded in
``Nfa.notes``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from guardpool.analysis.thompson import BOL, BOS, EOL, EOS, MEOL, Builder, Node, P, TooLarge


@dataclass
class Nfa:
    alphabet: list[str]
    masks: list[int]  # per state: the characters consumed on entering it (0 for START)
    # per state: successor -> (multiplicity 1|2, restriction mask or -1 for none)
    edges: list[dict[int, tuple[int, int]]]
    final: list[str]  # per state: "" | "any" | "end" (success only at the end) | "nl"
    atomic: list[bool]  # consumed inside an atomic group / possessive repeat
    notes: set[str] = field(default_factory=set)
    start: int = 0
    loop: int | None = None  # the implicit ``.*?`` of re.search, when modelled
    loop_nl: int | None = None  # its twin that just skipped a newline (``(?m)^`` passes)

    @property
    def loops(self) -> tuple[int, ...]:
        return tuple(s for s in (self.loop, self.loop_nl) if s is not None)

    def label(self, src: int, dst: int) -> int:
        _mult, restrict = self.edges[src][dst]
        mask = self.masks[dst]
        return mask if restrict < 0 else mask & restrict

    def chars(self, mask: int) -> list[str]:
        return [c for i, c in enumerate(self.alphabet) if mask >> i & 1]

    @functools.cached_property
    def popularity(self) -> list[int]:
        """Per alphabet character: how many states accept it.

        Attack strings prefer the least popular character of a class: it is the
        least likely to let the rest of the pattern match (``[abc]+\\w+[ab]+a``
        must be pumped with 'b', not 'a').
        """
        return [sum(m >> i & 1 for m in self.masks) for i in range(len(self.alphabet))]


def _closure(
    nodes: list[Node], source: int, *, at_start: bool, nl_mask: int, after_nl: bool = True
) -> tuple[dict[tuple[int, int], int], set[str]]:
    """Consuming nodes reachable from ``source`` by ε-paths: {(node, restrict): paths}.

    sre refuses an iteration that consumed nothing, so an ε-path may return to a
    loop's head only if it did not enter that loop's body itself; within that
    rule every distinct path counts (up to 2): ``(a*)*`` reaches ``a`` again
    through the inner loop or through a new outer iteration. Also returns how
    the accepting node (the last one) is reached.
    """
    accept = len(nodes) - 1
    found: dict[tuple[int, int], int] = {}
    finals: set[str] = set()
    budget = [20_000]

    def dfs(n: int, tags: frozenset[str], entered: frozenset[int]) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            return
        node = nodes[n]
        if node.char is not None:
            if EOS in tags or EOL in tags:
                return  # must be at the end: nothing can be consumed after it
            restrict = nl_mask if MEOL in tags else -1
            key = (n, restrict)
            found[key] = min(2, found.get(key, 0) + 1)
            return
        if n == accept:
            if EOS in tags or EOL in tags:
                finals.add("end")
            elif MEOL in tags:
                finals.add("nl")
            else:
                finals.add("any")
        for target, tag, loop in node.eps:
            if tag == BOS and not at_start:
                continue
            if tag == BOL and not (at_start or after_nl):
                continue  # (?m)^ where the previous character was not a newline
            if loop < 0 and -loop in entered:
                continue  # an empty iteration
            now = entered | {loop} if loop > 0 else entered
            dfs(target, tags | {tag} if tag else tags, now)

    dfs(source, frozenset(), frozenset())
    return found, finals


def build(pattern: str | bytes, flags: int = 0, *, mode: str = "search") -> Nfa:
    """The NFA of ``pattern`` as ``re.<mode>`` runs it (search | match | fullmatch).

    Raises ``re.error`` for a pattern ``re`` refuses and ``TooLarge``.
    """
    tree = P.parse(pattern, flags)
    isbytes = isinstance(pattern, bytes)
    b = Builder(tree, isbytes)
    gflags = tree.state.flags
    try:
        start, end = b.seq(tree, gflags)
        accept = b.node()
    except RecursionError:
        raise TooLarge from None
    b.eps(end, accept)
    nl_mask = 1 << b.alphabet.index("\n")

    consuming = [i for i, n in enumerate(b.nodes) if n.char is not None]
    index = {n: k + 1 for k, n in enumerate(consuming)}  # state 0 is START
    n_states = len(consuming) + 1
    masks = [0] + [b.nodes[n].char[0] for n in consuming]  # type: ignore[index]
    atomic = [False] + [b.nodes[n].atomic for n in consuming]
    edges: list[dict[int, tuple[int, int]]] = [{} for _ in range(n_states)]
    final = [""] * n_states

    def fill(state: int, source: int, at_start: bool) -> None:
        found, finals = _closure(b.nodes, source, at_start=at_start, nl_mask=nl_mask)
        for (node, restrict), count in found.items():
            edges[state][index[node]] = (count, restrict)
        final[state] = _final_kind(finals, mode)

    fill(0, start, True)
    for n in consuming:
        fill(index[n], b.nodes[n].char[1], False)  # type: ignore[index]
    nfa = Nfa(b.alphabet, masks, edges, final, atomic, b.notes)
    if mode == "search":
        # re.search tries every start position: an implicit lazy ``.*?`` in front.
        # With (?m)^ in the pattern, the scan is two states — it just skipped a
        # newline, or anything else — because only the first lets ^ pass.
        multiline_bol = any(tag == BOL for n in b.nodes for _, tag, _ in n.eps)
        everything = (1 << len(b.alphabet)) - 1
        twins = (
            [(everything & ~nl_mask, False), (nl_mask, True)]
            if multiline_bol
            else [(everything, True)]
        )
        first = len(nfa.masks)
        for k, (mask, after_nl) in enumerate(twins):
            nfa.masks.append(mask)
            nfa.atomic.append(False)
            found, finals = _closure(
                b.nodes, start, at_start=False, nl_mask=nl_mask, after_nl=after_nl
            )
            nfa.edges.append({index[node]: (c, r) for (node, r), c in found.items()})
            nfa.final.append(_final_kind(finals, mode))
            if k == 0:
                nfa.loop = first
            else:
                nfa.loop_nl = first + k
        for a in nfa.loops:
            nfa.edges[0][a] = (1, -1)
            for c in nfa.loops:
                nfa.edges[a][c] = (1, -1)
    return nfa


def _final_kind(finals: set[str], mode: str) -> str:
    if not finals:
        return ""
    if mode == "fullmatch":
        return "end"
    for kind in ("any", "nl", "end"):
        if kind in finals:
            return kind
    return ""
