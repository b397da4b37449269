"""Which optional extra installs which third-party module — one table for everyone.

    ModuleNotFoundError(name="uvicorn")            require("agents")
              │                                          │
              ▼                                          ▼
    missing_extra(exc) ──► EXTRAS["uvicorn"] ◄── MissingExtra("openai-agents", "agents")
              │               = ("server", "uvicorn")
              ▼
    the CLI: "guardpool serve needs the server extra …", exit 2

The CLI (a command whose extra is missing exits 2 with the install line instead of
a ModuleNotFoundError traceback) and the integrations (imported lazily, each
naming its extra) used to keep two tables; the CLI's lacked ``psycopg``, so a
core install with ``backend = "postgres"`` reported a bug instead of the hint.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple


class Extra(NamedTuple):
    extra: str  # pip install 'guardpool[<extra>]'
    distribution: str  # the package pip installs, when it differs from the module

    @property
    def install_line(self) -> str:
        """``'psycopg' is not installed: pip install 'guardpool[postgres]'``."""
        return f"{self.distribution!r} is not installed: pip install 'guardpool[{self.extra}]'"


# Top-level module -> the extra that installs it. Keep in step with
# [project.optional-dependencies] in pyproject.toml (tests/test_packaging.py checks).
EXTRAS: dict[str, Extra] = {
    "uvicorn": Extra("server", "uvicorn"),
    "starlette": Extra("server", "starlette"),
    "httptools": Extra("server", "httptools"),
    "prometheus_client": Extra("server", "prometheus-client"),
    "psycopg": Extra("postgres", "psycopg"),
    "psycopg_pool": Extra("postgres", "psycopg-pool"),
    "hypothesis": Extra("fuzz", "hypothesis"),
    "atheris": Extra("fuzz", "atheris"),
    "rich": Extra("demo", "rich"),
    "agents": Extra("agents", "openai-agents"),
    "litellm": Extra("litellm", "litellm"),
    "mcp": Extra("mcp", "mcp"),
    "tomlkit": Extra("tune", "tomlkit"),
}


class MissingExtra(ModuleNotFoundError):
    """An optional third-party package is not installed; the message says how to install it.

    A ``ModuleNotFoundError``, so the CLI's one handler for missing modules catches it.
    """

    def __init__(self, module: str) -> None:
        self.module = module
        self.extra, self.package = EXTRAS[module]
        super().__init__(
            f"this needs the {self.package!r} package, which is not installed; "
            f"install it with: pip install 'guardpool[{self.extra}]'",
            name=module,
        )


def missing_extra(exc: ModuleNotFoundError) -> Extra | None:
    """The extra whose absence raised ``exc``, or None for any other import error
    (a module missing *inside* an installed package is a bug, not an install step)."""
    if isinstance(exc, MissingExtra):
        return EXTRAS[exc.module]
    return EXTRAS.get((exc.name or "").partition(".")[0])


def require(module: str) -> ModuleType:
    """Import ``module`` (a key of ``EXTRAS``) or raise ``MissingExtra`` naming its extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.partition(".")[0] == module.partition(".")[0]:
            raise MissingExtra(module.partition(".")[0]) from None
        raise
