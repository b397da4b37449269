"""Pass 1 of ``astscan`` and the constant folding it serves: what a module's names hold.

Pass 1 records which names are the ``re``/``regex`` engines and their
functions (imports and aliases), the scopes (module, class, function) and
what each name is assigned in them. Over that, ``const`` folds an expression
to every string or bytes value it can have and ``flags`` to its ``re`` flags.
``astscan``'s scanner builds on ``ConstFolder`` to follow those values to the
calls that meet the engine; kept apart so that each half reads on its own.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

_ENGINES = {"re", "regex"}
FUNCTIONS = {
    "compile",
    "match",
    "search",
    "fullmatch",
    "findall",
    "finditer",
    "sub",
    "subn",
    "split",
}
_FLAG_WORDS = "A ASCII I IGNORECASE L LOCALE M MULTILINE S DOTALL X VERBOSE U UNICODE"
_FLAG_NAMES = {name: int(getattr(re, name)) for name in _FLAG_WORDS.split(" ")}
_MAX_DEPTH = 20


class Scope:
    def __init__(self, parent: Scope | None) -> None:
        self.parent = parent
        self.values: dict[str, list[ast.expr]] = {}

    def lookup(self, name: str) -> list[ast.expr] | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.values:
                return scope.values[name]
            scope = scope.parent
        return None


class ConstFolder:
    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.engines: set[str] = set()
        self.functions: dict[str, str] = {}  # local name -> engine function
        self.partials: set[str] = {"partial"}
        self.functools: set[str] = set()
        self.defs: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.scopes: dict[ast.AST, Scope] = {}
        self.scope_of: dict[ast.AST, Scope] = {}

    # -- pass 1: imports, scopes and assignments

    def collect(self) -> None:
        module = Scope(None)
        self.scopes[self.tree] = module
        self._collect_body(self.tree, module)

    def _collect_body(self, node: ast.AST, scope: Scope) -> None:
        for child in ast.iter_child_nodes(node):
            self.scope_of[child] = scope
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in _ENGINES:
                        self.engines.add(alias.asname or alias.name)
                    if alias.name == "functools":
                        self.functools.add(alias.asname or alias.name)
            elif isinstance(child, ast.ImportFrom):
                if child.module in _ENGINES:
                    for alias in child.names:
                        if alias.name in FUNCTIONS:
                            self.functions[alias.asname or alias.name] = alias.name
                elif child.module == "functools":
                    for alias in child.names:
                        if alias.name == "partial":
                            self.partials.add(alias.asname or alias.name)
            if isinstance(child, ast.Assign):
                for target in child.targets:
                    self._bind(target, child.value, scope)
            elif isinstance(child, ast.AnnAssign) and child.value is not None:
                self._bind(child.target, child.value, scope)
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = Scope(scope)
                self.scopes[child] = inner
                if not isinstance(child, ast.Lambda):
                    self.defs.setdefault(child.name, child)
                self._collect_body(child, inner)
            elif isinstance(child, ast.ClassDef):
                inner = Scope(scope)
                self.scopes[child] = inner
                self._collect_body(child, inner)
                # Class constants are also reachable as Class.NAME and self.NAME.
                for name, values in inner.values.items():
                    module_scope = self.scopes[self.tree]
                    module_scope.values.setdefault(f"{child.name}.{name}", values)
                    module_scope.values.setdefault(f"self.{name}", values)
            else:
                self._collect_body(child, scope)

    def _bind(self, target: ast.expr, value: ast.expr, scope: Scope) -> None:
        if isinstance(target, ast.Name):
            scope.values.setdefault(target.id, []).append(value)
        elif (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id in ("self", "cls")
        ):
            root = self.scopes[self.tree]
            root.values.setdefault(f"self.{target.attr}", []).append(value)
        elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            for t, v in zip(target.elts, value.elts, strict=False):
                self._bind(t, v, scope)

    # -- constant folding

    def const(self, node: ast.expr, scope: Scope, depth: int = 0) -> list[str | bytes]:
        """Every string/bytes value ``node`` can have, when all are known (else [])."""
        if depth > _MAX_DEPTH:
            return []
        d = depth + 1
        if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            texts = [""]
            for part in node.values:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    texts = [t + part.value for t in texts]
                elif isinstance(part, ast.FormattedValue) and part.format_spec is None:
                    inner = [v for v in self.const(part.value, scope, d) if isinstance(v, str)]
                    if not inner or part.conversion not in (-1, ord("s")):
                        return []
                    texts = [t + v for t in texts for v in inner][:16]
                else:
                    return []
            return list(texts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.const(node.left, scope, d), self.const(node.right, scope, d)
            return [
                a + b  # type: ignore[operator]  # same type checked below
                for a in left
                for b in right
                if type(a) is type(b)
            ][:16]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            fmt = self.const(node.left, scope, d)
            args = self._const_args(node.right, scope, d)
            if args is None:
                return []
            out: list[str | bytes] = []
            for f in fmt:
                try:
                    out.append(f % args)
                except (TypeError, ValueError, KeyError):
                    return []
            return out
        if isinstance(node, ast.Name | ast.Attribute):
            key = dotted(node)
            values = scope.lookup(key) if key else None
            if not values:
                return []
            result: list[str | bytes] = []
            for v in values:
                folded = self.const(v, self.scope_of.get(v, scope), d)
                if not folded:
                    return []
                result.extend(folded)
            return result[:16]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return self._const_method(node, scope, d)
        return []

    def _const_args(self, node: ast.expr, scope: Scope, depth: int) -> tuple[object, ...] | None:
        return self._const_each(node.elts if isinstance(node, ast.Tuple) else [node], scope, depth)

    def _const_each(
        self, items: Sequence[ast.expr], scope: Scope, depth: int
    ) -> tuple[object, ...] | None:
        """Each item's one constant value, or None if any has none or several."""
        out: list[object] = []
        for item in items:
            values = self.const(item, scope, depth)
            if len(values) != 1:
                return None
            out.append(values[0])
        return tuple(out)

    def _const_method(self, node: ast.Call, scope: Scope, depth: int) -> list[str | bytes]:
        assert isinstance(node.func, ast.Attribute)
        owner = self.const(node.func.value, scope, depth)
        if len(owner) != 1:
            return []
        if node.func.attr == "join" and len(node.args) == 1:
            seq = node.args[0]
            if not isinstance(seq, ast.List | ast.Tuple):
                return []
            parts = self._const_each(seq.elts, scope, depth)
            if parts is None:
                return []
            try:
                return [owner[0].join(parts)]  # type: ignore[arg-type]
            except TypeError:
                return []
        if node.func.attr == "format" and isinstance(owner[0], str):
            args = self._const_each(node.args, scope, depth)
            if args is None:
                return []
            kwargs = {}
            for kw in node.keywords:
                values = self.const(kw.value, scope, depth) if kw.arg else []
                if len(values) != 1 or kw.arg is None:
                    return []
                kwargs[kw.arg] = values[0]
            try:
                return [owner[0].format(*args, **kwargs)]
            except (IndexError, KeyError, ValueError):
                return []
        return []

    def flags(self, node: ast.expr | None, scope: Scope, depth: int = 0) -> int:
        if node is None or depth > _MAX_DEPTH:
            return 0
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Attribute) and dotted(node.value) in self.engines:
            if node.attr in _FLAG_NAMES:
                return _FLAG_NAMES[node.attr]
            if node.attr == "RegexFlag":
                return 0
        if isinstance(node, ast.Attribute) and node.attr in _FLAG_NAMES:
            return _FLAG_NAMES[node.attr]  # re.RegexFlag.IGNORECASE
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr | ast.Add):
            return self.flags(node.left, scope, depth + 1) | self.flags(
                node.right, scope, depth + 1
            )
        if isinstance(node, ast.Name):
            if node.id in _FLAG_NAMES and node.id in self.functions.values():
                return _FLAG_NAMES[node.id]
            values = scope.lookup(node.id)
            if values and len(values) == 1:
                return self.flags(values[0], self.scope_of.get(values[0], scope), depth + 1)
        return 0


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""
