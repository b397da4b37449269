"""A pattern's parse tree as a Thompson automaton with ε-edges: the first half of ``nfa.build``.

``Builder`` turns what ``re._parser`` gives into ``Node``s joined by ε-edges
that carry zero-width assertions and loop marks, each character item a mask
over the alphabet (asked of the real engine). ``nfa`` removes the ε-edges;
its docstring says what the alphabet holds and what is approximated here.
``P`` and ``C`` (CPython's parser and its constants) live here because this
is what reads the parse tree; ``redos`` hands them on to ``fuzzgen``.
"""

from __future__ import annotations

import importlib
import re
import string
from dataclasses import dataclass, field
from typing import Any

P: Any = importlib.import_module("re._parser")
C: Any = importlib.import_module("re._constants")
_COMPILER: Any = importlib.import_module("re._compiler")

EXPAND_LIMIT = 32  # bounded repeats up to this count are expanded exactly
MAX_NODES = 20_000  # beyond this the pattern is "too large to analyse"
_EXTRA = "\t\n\r\x0b\x0c\x00\x01\x7f\x80\x85\xa0éßſİıKµ٣\u2028\u3000😀"
_CONSUMING = {C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN}
_REPEATS = {C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT}

# Zero-width conditions an ε-path can carry.
BOS, BOL, EOS, EOL, MEOL = "bos", "bol", "eos", "eol", "meol"


class TooLarge(Exception):
    """The automaton would exceed MAX_NODES states."""


@dataclass
class Node:
    # (target, assertion tag, loop mark: +L enters loop L's body, -L returns to its head)
    eps: list[tuple[int, str | None, int]] = field(default_factory=list)
    char: tuple[int, int] | None = None  # (mask, target)
    atomic: bool = False


class Builder:
    def __init__(self, tree: Any, isbytes: bool) -> None:
        self.isbytes = isbytes
        self.nodes: list[Node] = []
        self.notes: set[str] = set()
        self.groups: dict[int, tuple[Any, int]] = {}
        self.alphabet = _alphabet(tree, isbytes)
        self._mask_cache: dict[tuple[str, int], int] = {}
        self._atomic = 0
        self._loops = 0

    def node(self) -> int:
        if len(self.nodes) >= MAX_NODES:
            raise TooLarge
        self.nodes.append(Node(atomic=self._atomic > 0))
        return len(self.nodes) - 1

    def eps(self, a: int, b: int, tag: str | None = None, loop: int = 0) -> None:
        self.nodes[a].eps.append((b, tag, loop))

    def mask(self, item: Any, flags: int) -> int:
        key = (repr(item), flags)
        cached = self._mask_cache.get(key)
        if cached is not None:
            return cached
        state = P.State()
        state.flags = flags
        sub = P.SubPattern(state, [item])
        rx = _COMPILER.compile(sub, flags)
        m = 0
        for i, ch in enumerate(self.alphabet):
            probe: str | bytes = ch.encode("latin-1") if self.isbytes else ch
            if rx.fullmatch(probe):
                m |= 1 << i
        self._mask_cache[key] = m
        return m

    def seq(self, items: Any, flags: int) -> tuple[int, int]:
        start = cur = self.node()
        for item in items:
            s, e = self.item(item, flags)
            self.eps(cur, s)
            cur = e
        return start, cur

    def item(self, item: Any, flags: int) -> tuple[int, int]:
        op, av = item
        if op in _CONSUMING:
            s, e = self.node(), self.node()
            self.nodes[s].char = (self.mask(item, flags), e)
            return s, e
        if op == C.SUBPATTERN:
            group, add, delete, sub = av
            inner = (flags | add) & ~delete
            s, e = self.seq(sub, inner)
            if group is not None:
                self.groups[group] = (sub, inner)
            return s, e
        if op == C.BRANCH:
            s, e = self.node(), self.node()
            for branch in av[1]:
                bs, be = self.seq(branch, flags)
                self.eps(s, bs)
                self.eps(be, e)
            return s, e
        if op in _REPEATS:
            return self.repeat(op, av, flags)
        if op == C.AT:
            s, e = self.node(), self.node()
            self.eps(s, e, self.at(av, flags))
            return s, e
        if op in (C.ASSERT, C.ASSERT_NOT):
            self.notes.add("lookarounds are assumed to pass (their condition is not modelled)")
            s = self.node()
            return s, s
        if op == C.ATOMIC_GROUP:
            self._atomic += 1
            try:
                return self.seq(av, flags)
            finally:
                self._atomic -= 1
        if op == C.GROUPREF:
            self.notes.add(
                "a backreference is modelled as a copy of its group (equality not enforced)"
            )
            sub, gflags = self.groups.get(av, ([], flags))
            return self.seq(sub, gflags)
        if op == C.GROUPREF_EXISTS:
            self.notes.add("a conditional group is modelled as either branch")
            _group, yes, no = av
            s, e = self.node(), self.node()
            for branch in (yes, no or []):
                bs, be = self.seq(branch, flags)
                self.eps(s, bs)
                self.eps(be, e)
            return s, e
        if op == C.FAILURE:  # (?!) : nothing matches
            s, e = self.node(), self.node()
            return s, e
        # Anything unknown: an empty step, said so.
        self.notes.add(f"construct {op} is treated as empty")
        s = self.node()
        return s, s

    def at(self, code: Any, flags: int) -> str | None:
        multiline = bool(flags & re.MULTILINE)
        if code == C.AT_BEGINNING_STRING or (code == C.AT_BEGINNING and not multiline):
            return BOS
        if code == C.AT_END_STRING:
            return EOS
        if code == C.AT_END:
            return MEOL if multiline else EOL
        if code == C.AT_BEGINNING:  # multiline: at the start or after a newline
            return BOL
        if code in (C.AT_BOUNDARY, C.AT_NON_BOUNDARY):
            self.notes.add(r"\b and \B are assumed to pass")
        return None

    def repeat(self, op: Any, av: Any, flags: int) -> tuple[int, int]:
        lo, hi, body = av
        possessive = op == C.POSSESSIVE_REPEAT
        if possessive:
            self._atomic += 1
        try:
            if hi != C.MAXREPEAT and hi > EXPAND_LIMIT:
                self.notes.add(
                    f"a repeat bounded at {hi} (> {EXPAND_LIMIT}) is analysed as unbounded"
                )
                lo, hi = min(lo, 2), C.MAXREPEAT
            elif lo > EXPAND_LIMIT:
                lo = EXPAND_LIMIT
            start = cur = self.node()
            for _ in range(lo):
                s, e = self.seq(body, flags)
                self.eps(cur, s)
                cur = e
            if hi == C.MAXREPEAT:
                loop, end = self.node(), self.node()
                self._loops += 1
                mark = self._loops
                self.eps(cur, loop)
                s, e = self.seq(body, flags)
                self.eps(loop, s, loop=mark)
                self.eps(e, loop, loop=-mark)  # back to the head, for another iteration
                self.eps(loop, end)
                return start, end
            end = self.node()
            # Optional copies nested: x(x(x)?)? — sre counts iterations, it does not
            # choose which of several optional copies matched.
            tails: list[int] = []
            for _ in range(hi - lo):
                s, e = self.seq(body, flags)
                self.eps(cur, s)
                tails.append(cur)
                cur = e
            self.eps(cur, end)
            for t in tails:
                self.eps(t, end)
            return start, end
        finally:
            if possessive:
                self._atomic -= 1


def _alphabet(tree: Any, isbytes: bool) -> list[str]:
    chars: set[str] = set(string.printable) | set(_EXTRA)

    def walk(items: Any) -> None:
        for op, av in items:
            if op in (C.LITERAL, C.NOT_LITERAL):
                chars.add(chr(av))
            elif op == C.IN:
                for iop, iav in av:
                    if iop == C.LITERAL:
                        chars.add(chr(iav))
                    elif iop in (C.RANGE, C.RANGE_UNI_IGNORE):
                        lo, hi = iav
                        for c in (lo, hi, lo - 1, hi + 1):
                            if 0 <= c <= 0x10FFFF:
                                chars.add(chr(c))
            elif op == C.SUBPATTERN:
                walk(av[-1])
            elif op == C.BRANCH:
                for b in av[1]:
                    walk(b)
            elif op in _REPEATS:
                walk(av[2])
            elif op == C.ATOMIC_GROUP:
                walk(av)
            elif op in (C.ASSERT, C.ASSERT_NOT):
                walk(av[1])
            elif op == C.GROUPREF_EXISTS:
                walk(av[1])
                if av[2]:
                    walk(av[2])

    walk(tree)
    if isbytes:
        chars = {c for c in chars if ord(c) < 256}
    # Printable first, so that representatives picked for attack strings read well.
    return sorted(chars, key=lambda c: (not c.isprintable(), c.isspace() and c != " ", ord(c)))
