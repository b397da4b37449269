"""Coverage-guided fuzzing of policy loading: any bytes must load or raise PolicyError.

python -m fuzz.harness_config [atheris options]     # or: make fuzz
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

from guardpool.policy.errors import PolicyError
from guardpool.policy.loader import load_policy

_DIR = Path(tempfile.mkdtemp(prefix="guardpool-fuzz-config-"))


def TestOneInput(data: bytes) -> None:
    for suffix in (".toml", ".json"):
        path = _DIR / f"policy{suffix}"
        path.write_bytes(data)
        with contextlib.suppress(PolicyError):
            load_policy(path)


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
