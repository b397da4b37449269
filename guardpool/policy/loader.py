"""Loading a policy: a source decoded, then compiled into the runtime Policy.

    load_policy(file | dict | Config)
      └► source.read_source ──► Source(config, name, base_dir, import_path)
           └► compile.resolve_paths ──► runtime.Policy(...) (checks, RE2, callables)

Errors from any stage are PolicyErrors that name the file. ``Policy``,
``CompiledLimit`` and ``CompiledPrice`` are importable from here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guardpool.policy.compile import CompiledLimit, CompiledPrice, resolve_paths
from guardpool.policy.config import Config
from guardpool.policy.errors import PolicyError
from guardpool.policy.runtime import Policy, PolicyMatch
from guardpool.policy.source import read_source

__all__ = ["CompiledLimit", "CompiledPrice", "Policy", "PolicyMatch", "load_policy"]


def load_policy(source: str | Path | dict[str, Any] | Config) -> Policy:
    """Load and compile a policy from a TOML/JSON file, a dict or a Config.

    A file is TOML unless its name ends in ``.json``; relative store and audit
    paths resolve against its directory, and guard modules are imported from
    that directory and its parent before ``sys.path`` (without changing
    ``sys.path``). A dict or Config resolves against the working directory and
    imports guards through ``sys.path`` only.
    """
    src = read_source(source)
    try:
        return Policy(
            resolve_paths(src.config, src.base_dir),
            src.name,
            src.base_dir,
            import_path=src.import_path,
        )
    except PolicyError as exc:
        if isinstance(source, str | Path):
            raise exc.located(file=src.name) from None
        raise
