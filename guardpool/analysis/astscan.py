"""Find the regexes a guard module hands to Python's backtracking engines.

Reads the module's source (never imports it) and follows patterns to where
they meet ``re`` or ``regex``:

- every call style: ``re.search(PAT, s)``, ``re.findall``/``sub``/``split``…,
  functions imported by name (``from re import search``), engine aliases
  (``import re as _re``), ``re.compile(PAT).match(s)``;
- patterns held in module, class or function constants and simple
  assignments, concatenations (``A + B``, implicit), ``"|".join([...])`` of
  constants, ``%``/``.format`` of constants and f-strings whose parts are all
  constants;
- compiled objects: ``X = re.compile(PAT, re.I)`` (also ``self.X = ...``) is
  followed to ``X.match(s)`` / ``self.X.fullmatch(s)``, into functions it is
  passed to (``helper(X)`` then ``rx.search(...)`` inside ``helper``) and
  default arguments; with no use found it is analysed as ``search``, the
  worst case;
- ``functools.partial(re.search, PAT)``.

Flags are resolved from ``re.I | re.X``-style expressions, ``flags=`` and
flag constants. Each use carries ``path``, line and column of the call that
meets the engine, the call style (which decides ``search``/``match``/
``fullmatch`` semantics) and how the pattern got there. A module that cannot
be read or parsed is a ``ScanProblem``, not an exception.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
_METHODS = FUNCTIONS - {"compile"}
_FLAG_WORDS = "A ASCII I IGNORECASE L LOCALE M MULTILINE S DOTALL X VERBOSE U UNICODE"
_FLAG_NAMES = {name: int(getattr(re, name)) for name in _FLAG_WORDS.split(" ")}
_MAX_DEPTH = 20


@dataclass(frozen=True)
class RegexUse:
    file: str
    line: int
    call: str  # as written: "re.search", "WORDS.match", "re.compile"
    pattern: str  # a bytes pattern is held decoded as latin-1, with ``isbytes`` set
    col: int = 1
    flags: int = 0
    method: str = "search"  # the engine method it runs: search, match, fullmatch, sub…
    via: str = ""  # how the pattern got there, when not inline
    isbytes: bool = False

    @property
    def source_pattern(self) -> str | bytes:
        """The pattern as the engine gets it (bytes for a bytes pattern)."""
        return self.pattern.encode("latin-1") if self.isbytes else self.pattern


@dataclass(frozen=True)
class ScanProblem:
    file: str
    line: int
    col: int
    message: str


@dataclass
class _Compiled:
    pattern: str | bytes
    flags: int
    node: ast.Call
    call: str
    via: str
    methods: dict[str, int] = field(default_factory=dict)  # method -> first line used


class _Scope:
    def __init__(self, parent: _Scope | None) -> None:
        self.parent = parent
        self.values: dict[str, list[ast.expr]] = {}

    def lookup(self, name: str) -> list[ast.expr] | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.values:
                return scope.values[name]
            scope = scope.parent
        return None


class _Scanner:
    def __init__(self, tree: ast.Module, filename: str) -> None:
        self.tree = tree
        self.file = filename
        self.engines: set[str] = set()
        self.functions: dict[str, str] = {}  # local name -> engine function
        self.partials: set[str] = {"partial"}
        self.functools: set[str] = set()
        self.uses: list[RegexUse] = []
        self.compiled: dict[str, list[_Compiled]] = {}  # name or attribute -> objects
        self.defs: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.scopes: dict[ast.AST, _Scope] = {}
        self.scope_of: dict[ast.AST, _Scope] = {}
        self._inline_compiled: list[_Compiled] = []
        self._parents: dict[ast.AST, ast.AST] = {
            child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)
        }

    # -- pass 1: imports, scopes and assignments

    def collect(self) -> None:
        module = _Scope(None)
        self.scopes[self.tree] = module
        self._collect_body(self.tree, module)

    def _collect_body(self, node: ast.AST, scope: _Scope) -> None:
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
                inner = _Scope(scope)
                self.scopes[child] = inner
                if not isinstance(child, ast.Lambda):
                    self.defs.setdefault(child.name, child)
                self._collect_body(child, inner)
            elif isinstance(child, ast.ClassDef):
                inner = _Scope(scope)
                self.scopes[child] = inner
                self._collect_body(child, inner)
                # Class constants are also reachable as Class.NAME and self.NAME.
                for name, values in inner.values.items():
                    module_scope = self.scopes[self.tree]
                    module_scope.values.setdefault(f"{child.name}.{name}", values)
                    module_scope.values.setdefault(f"self.{name}", values)
            else:
                self._collect_body(child, scope)

    def _bind(self, target: ast.expr, value: ast.expr, scope: _Scope) -> None:
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

    def const(self, node: ast.expr, scope: _Scope, depth: int = 0) -> list[str | bytes]:
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
            key = _dotted(node)
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

    def _const_args(self, node: ast.expr, scope: _Scope, depth: int) -> tuple[object, ...] | None:
        items = node.elts if isinstance(node, ast.Tuple) else [node]
        out: list[object] = []
        for item in items:
            values = self.const(item, scope, depth)
            if len(values) != 1:
                return None
            out.append(values[0])
        return tuple(out)

    def _const_method(self, node: ast.Call, scope: _Scope, depth: int) -> list[str | bytes]:
        assert isinstance(node.func, ast.Attribute)
        owner = self.const(node.func.value, scope, depth)
        if len(owner) != 1:
            return []
        if node.func.attr == "join" and len(node.args) == 1:
            seq = node.args[0]
            if not isinstance(seq, ast.List | ast.Tuple):
                return []
            parts = []
            for elt in seq.elts:
                values = self.const(elt, scope, depth)
                if len(values) != 1:
                    return []
                parts.append(values[0])
            try:
                return [owner[0].join(parts)]  # type: ignore[arg-type]
            except TypeError:
                return []
        if node.func.attr == "format" and isinstance(owner[0], str):
            args = []
            for a in node.args:
                values = self.const(a, scope, depth)
                if len(values) != 1:
                    return []
                args.append(values[0])
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

    def flags(self, node: ast.expr | None, scope: _Scope, depth: int = 0) -> int:
        if node is None or depth > _MAX_DEPTH:
            return 0
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Attribute) and _dotted(node.value) in self.engines:
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

    # -- pass 2: calls

    def engine_function(self, func: ast.expr) -> str | None:
        """``re.search`` / ``search`` (imported from re) -> "search"."""
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in self.engines
            and func.attr in FUNCTIONS
        ):
            return func.attr
        if isinstance(func, ast.Name) and func.id in self.functions:
            return self.functions[func.id]
        return None

    def is_partial(self, func: ast.expr) -> bool:
        if isinstance(func, ast.Name):
            return func.id in self.partials
        return (
            isinstance(func, ast.Attribute)
            and func.attr == "partial"
            and isinstance(func.value, ast.Name)
            and func.value.id in self.functools
        )

    def scan(self) -> None:
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            scope = self._scope_for(node)
            fn = self.engine_function(node.func)
            if fn is not None:
                self._engine_call(node, fn, scope, _call_text(node.func))
            elif self.is_partial(node.func) and node.args:
                inner = self.engine_function(node.args[0])
                if inner is not None:
                    fake = ast.Call(func=node.args[0], args=node.args[1:], keywords=node.keywords)
                    ast.copy_location(fake, node)
                    self._engine_call(fake, inner, scope, f"partial({_call_text(node.args[0])})")
            elif isinstance(node.func, ast.Attribute) and node.func.attr in _METHODS:
                for obj in self._compiled_for(node.func.value, scope):
                    obj.methods.setdefault(node.func.attr, node.lineno)
        self._follow_arguments()
        for objs in self.compiled.values():
            for obj in objs:
                self._emit_compiled(obj)
        for obj in self._inline_compiled:
            self._emit_compiled(obj)

    def _scope_for(self, node: ast.AST) -> _Scope:
        scope = self.scope_of.get(node)
        return scope if scope is not None else self.scopes[self.tree]

    def _engine_call(self, node: ast.Call, fn: str, scope: _Scope, call: str) -> None:
        pattern_node = node.args[0] if node.args else _keyword(node, "pattern")
        if pattern_node is None:
            return
        flag_node = _keyword(node, "flags")
        if flag_node is None:
            position = {"compile": 1, "match": 2, "search": 2, "fullmatch": 2, "findall": 2}
            position |= {"finditer": 2, "split": 3, "sub": 4, "subn": 4}
            index = position[fn]
            if len(node.args) > index:
                flag_node = node.args[index]
        flags = self.flags(flag_node, scope)
        values = self.const(pattern_node, scope)
        if not values and isinstance(pattern_node, ast.Name | ast.Attribute):
            # A compiled object handed to a module function: re.search(WORDS_RE, s).
            for obj in self._compiled_for(pattern_node, scope):
                obj.methods.setdefault(fn, node.lineno)
            return
        via = _via(pattern_node)
        for value in values:
            if fn == "compile":
                obj = _Compiled(value, flags, node, call, via)
                self._register_compiled(node, obj)
            else:
                self.uses.append(
                    RegexUse(
                        self.file,
                        node.lineno,
                        call,
                        _text(value),
                        node.col_offset + 1,
                        flags,
                        fn,
                        via,
                        isinstance(value, bytes),
                    )
                )

    def _register_compiled(self, node: ast.Call, obj: _Compiled) -> None:
        names = self._names_bound_to(node)
        if names:
            for name in names:
                self.compiled.setdefault(name, []).append(obj)
        else:
            self._inline_compiled.append(obj)
            parent = self._parents.get(node)
            if isinstance(parent, ast.Attribute) and parent.attr in _METHODS:
                obj.methods.setdefault(parent.attr, node.lineno)

    def _names_bound_to(self, node: ast.Call) -> list[str]:
        parent = self._parents.get(node)
        if isinstance(parent, ast.Assign | ast.AnnAssign):
            targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
            names = []
            for target in targets:
                key = _dotted(target)
                if key:
                    names.append(key)
                    if key.startswith(("self.", "cls.")):
                        names.append("self." + key.split(".", 1)[1])
            return list(dict.fromkeys(names))
        return []

    def _compiled_for(self, node: ast.expr, scope: _Scope) -> list[_Compiled]:
        key = _dotted(node)
        if not key:
            return []
        if key.startswith("cls."):
            key = "self." + key[4:]
        found = list(self.compiled.get(key, []))
        if not found and "." in key:
            # self.NAME / Class.NAME for a compiled class attribute or self.NAME = ...
            last = key.rsplit(".", 1)[1]
            found = list(self.compiled.get("self." + last, [])) or list(self.compiled.get(last, []))
        return found

    def _follow_arguments(self) -> None:
        """Compiled objects passed to module functions: methods called on the parameter."""
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            fdef = self.defs.get(node.func.id)
            if fdef is None:
                continue
            params = [a.arg for a in (*fdef.args.posonlyargs, *fdef.args.args)]
            pairs: list[tuple[str, ast.expr]] = list(zip(params, node.args, strict=False))
            pairs += [(kw.arg, kw.value) for kw in node.keywords if kw.arg]
            scope = self._scope_for(node)
            for param, arg in pairs:
                for obj in self._compiled_for(arg, scope):
                    for method, line in _methods_on(fdef, param):
                        obj.methods.setdefault(method, line)
        for fdef in self.defs.values():
            defaults = fdef.args.defaults
            params = [a.arg for a in fdef.args.args][-len(defaults) :] if defaults else []
            pairs = list(zip(params, defaults, strict=False))
            pairs += [
                (a.arg, d)
                for a, d in zip(fdef.args.kwonlyargs, fdef.args.kw_defaults, strict=False)
                if d is not None
            ]
            for param, default in pairs:
                for obj in self._compiled_for(default, self.scopes[self.tree]):
                    for method, line in _methods_on(fdef, param):
                        obj.methods.setdefault(method, line)

    def _emit_compiled(self, obj: _Compiled) -> None:
        methods = obj.methods or {"search": 0}
        for method, line in sorted(methods.items()):
            used = f"used as .{method}() at line {line}" if line else "no use found: as search"
            via = f"{obj.via}; {used}" if obj.via else used
            self.uses.append(
                RegexUse(
                    self.file,
                    obj.node.lineno,
                    obj.call,
                    _text(obj.pattern),
                    obj.node.col_offset + 1,
                    obj.flags,
                    method,
                    via,
                    isinstance(obj.pattern, bytes),
                )
            )


def _methods_on(fdef: ast.AST, param: str) -> Iterator[tuple[str, int]]:
    for node in ast.walk(fdef):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _METHODS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == param
        ):
            yield node.func.attr, node.lineno


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _call_text(func: ast.expr) -> str:
    return _dotted(func) or "<call>"


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in node.keywords if kw.arg == name), None)


def _via(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        return ""
    name = _dotted(node)
    if name:
        return f"pattern from {name}"
    kind = "f-string" if isinstance(node, ast.JoinedStr) else "constant expression"
    return f"pattern from a {kind}"


def scan_tree(tree: ast.Module, filename: str) -> list[RegexUse]:
    scanner = _Scanner(tree, filename)
    scanner.collect()
    scanner.scan()
    scanner.uses.sort(key=lambda u: (u.line, u.col, u.method))
    return scanner.uses


def scan_source_full(source: str, filename: str) -> tuple[list[RegexUse], list[ScanProblem]]:
    """The regex uses in ``source``, or why it could not be scanned."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        return [], [
            ScanProblem(filename, exc.lineno or 1, exc.offset or 1, f"syntax error: {exc.msg}")
        ]
    except (ValueError, RecursionError, MemoryError) as exc:
        return [], [ScanProblem(filename, 1, 1, f"cannot parse: {exc}")]
    try:
        return scan_tree(tree, filename), []
    except RecursionError:
        return [], [ScanProblem(filename, 1, 1, "too deeply nested to scan")]


def scan_source(source: str, filename: str) -> list[RegexUse]:
    return scan_source_full(source, filename)[0]


def module_file(module: str) -> Path | None:
    """The source file of an importable module, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def scan_module_full(module: str) -> tuple[str, list[RegexUse], list[ScanProblem]]:
    """(file, uses, problems) for an importable module name."""
    path = module_file(module)
    if path is None:
        return module, [], [ScanProblem(module, 1, 1, f"no Python source found for {module!r}")]
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return str(path), [], [ScanProblem(str(path), 1, 1, f"cannot read: {exc}")]
    uses, problems = scan_source_full(source, str(path))
    return str(path), uses, problems


def scan_module(module: str) -> list[RegexUse]:
    return scan_module_full(module)[1]
