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
be read or parsed is a ``ScanProblem``, not an exception. What the names
hold (pass 1, and the folding of constants and flags) is ``astconst``'s.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from guardpool.analysis.astconst import FUNCTIONS, ConstFolder, Scope, dotted

_METHODS = FUNCTIONS - {"compile"}


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


class _Scanner(ConstFolder):
    def __init__(self, tree: ast.Module, filename: str) -> None:
        super().__init__(tree)
        self.file = filename
        self.uses: list[RegexUse] = []
        self.compiled: dict[str, list[_Compiled]] = {}  # name or attribute -> objects
        self._inline_compiled: list[_Compiled] = []
        self._parents: dict[ast.AST, ast.AST] = {
            child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)
        }

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

    def _scope_for(self, node: ast.AST) -> Scope:
        scope = self.scope_of.get(node)
        return scope if scope is not None else self.scopes[self.tree]

    def _engine_call(self, node: ast.Call, fn: str, scope: Scope, call: str) -> None:
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
                key = dotted(target)
                if key:
                    names.append(key)
                    if key.startswith(("self.", "cls.")):
                        names.append("self." + key.split(".", 1)[1])
            return list(dict.fromkeys(names))
        return []

    def _compiled_for(self, node: ast.expr, scope: Scope) -> list[_Compiled]:
        key = dotted(node)
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


def _call_text(func: ast.expr) -> str:
    return dotted(func) or "<call>"


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in node.keywords if kw.arg == name), None)


def _via(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        return ""
    name = dotted(node)
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
