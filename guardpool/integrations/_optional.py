"""Lazy imports of optional extras, with an install hint that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An adapter's third-party package is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"this needs the {package!r} package, which is not installed; "
            f"install it with: pip install 'guardpool[{extra}]'"
        )


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingExtra naming ``guardpool[extra]``.

    ``package`` is the distribution name when it differs from the module
    (``openai-agents`` installs ``agents``).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only the package itself missing is an install problem; a missing
        # dependency *inside* an installed package is a real bug, re-raised.
        top = module.partition(".")[0]
        if exc.name is not None and exc.name.partition(".")[0] == top:
            raise MissingExtra(package or top, extra) from None
        raise
