"""Find the regexes a guard module hands to Python's backtracking engines.

Scans the module's source (not its runtime) for calls such as
``re.compile("...")`` or ``regex.search("...", text)`` whose pattern is a string
literal, and reports where they are.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

_ENGINES = {"re", "regex"}
_FUNCTIONS = {
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


@dataclass(frozen=True)
class RegexUse:
    file: str
    line: int
    call: str
    pattern: str


def module_file(module: str) -> Path | None:
    """The source file of an importable module, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def scan_source(source: str, filename: str) -> list[RegexUse]:
    try:
        tree = ast.parse(source, filename)
    except SyntaxError:
        return []
    uses = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id in _ENGINES):
            continue
        if node.func.attr not in _FUNCTIONS or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            uses.append(
                RegexUse(filename, node.lineno, f"{owner.id}.{node.func.attr}", first.value)
            )
    return uses


def scan_module(module: str) -> list[RegexUse]:
    path = module_file(module)
    if path is None:
        return []
    return scan_source(path.read_text(encoding="utf-8", errors="replace"), str(path))
