"""The package as a user gets it: a wheel built from the tree, installed alone.

A fresh venv, no ``-e``, no extras, commands run from another directory — the
way a new user meets guardpool. This caught ``guardpool serve`` dying with a
``ModuleNotFoundError`` traceback on a core install (now: exit 2 and the hint).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "dev.lock"


def _build(kind: str, out: Path) -> Path:
    # PEP 517 hooks called directly, without isolation: no network, no `build` package.
    code = f"import sys; from setuptools import build_meta as b; print(b.build_{kind}(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("wheel", tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(LOCK),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    yield env_dir / "bin" / "guardpool"


def _run(exe: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return subprocess.run(
        [str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_wheel_has_metadata_license_and_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    assert "License-Expression: Apache-2.0" in meta
    assert "Classifier: Operating System :: POSIX :: Linux" in meta
    assert "Requires-Python: >=3.11" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "guardpool/demo/policy.toml" in names
    assert "guardpool/py.typed" in names
    # uvicorn[standard] pulled watchfiles, websockets, python-dotenv and PyYAML.
    server_reqs = [line for line in meta.splitlines() if 'extra == "server"' in line]
    assert server_reqs and not any("standard" in line for line in server_reqs)
    # The hook's HTTP client is the standard library's: httpx is only for our tests.
    httpx = [line for line in meta.splitlines() if line.startswith("Requires-Dist: httpx")]
    assert httpx and all('extra == "dev"' in line for line in httpx)


def test_core_install_runs_from_another_directory(installed: Path, tmp_path: Path) -> None:
    helped = _run(installed, "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "serve" in helped.stdout
    demo = _run(installed, "demo", "--no-color", cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    doctor = _run(installed, "doctor", cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    assert "Traceback" not in doctor.stderr


def test_core_install_serve_names_the_missing_extra(installed: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("")
    served = _run(installed, "serve", "--config", str(policy), "--no-auth", cwd=tmp_path)
    assert served.returncode == 2
    assert "Traceback" not in served.stderr
    assert "pip install 'guardpool[server]'" in served.stderr


@pytest.mark.parametrize(
    ("policy_text", "command", "extra"),
    [
        ('[store]\nbackend = "postgres"\nurl = "postgresql://h/x"\n', "check", "postgres"),
        ("", "mcp-proxy", "mcp"),
    ],
)
def test_core_install_names_each_missing_extra(
    installed: Path, tmp_path: Path, policy_text: str, command: str, extra: str
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text)
    args = {
        "check": ["check", "--config", str(policy), "--label", "exe:llm:m", "--input", "hi"],
        "mcp-proxy": ["mcp-proxy", "--config", str(policy), "--", "true"],
    }[command]
    out = _run(installed, *args, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert f"pip install 'guardpool[{extra}]'" in out.stderr, out.stderr


def test_the_extras_table_matches_pyproject() -> None:
    # One table says which extra installs which module; it must agree with pyproject.
    import re
    import tomllib

    from guardpool.extras import EXTRAS

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def name(req: str) -> str:
        return re.split(r"[\[<>=~!; ]", req, maxsplit=1)[0].lower()

    for module, (extra, distribution) in EXTRAS.items():
        assert extra in declared, (module, extra)
        assert distribution.lower() in {name(r) for r in declared[extra]}, (module, extra)
    covered = {(e, d.lower()) for e, d in EXTRAS.values()}
    for extra, reqs in declared.items():
        if extra == "dev":
            continue
        for req in reqs:
            assert (extra, name(req)) in covered, f"{name(req)} ({extra}) is not in EXTRAS"


def test_sdist_carries_what_its_tests_need(tmp_path: Path) -> None:
    sdist = _build("sdist", tmp_path)
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in (
        "LICENSE",
        "Makefile",
        "requirements/dev.lock",
        "tests/conftest.py",
        "tests/test_packaging.py",
        "examples/guardpool.toml",
        "docs/openapi.json",
    ):
        assert needed in names, needed
    assert not any("__pycache__" in n for n in names)


def test_core_install_hook_reaches_a_server_without_extras(installed: Path, tmp_path: Path) -> None:
    # httpx sat in the server extra: a core install denied every tool call with
    # "No module named 'httpx'". Now the hook speaks HTTP with the standard library;
    # against a port where nothing listens it still fails closed, for the right reason.
    payload = (
        '{"hook_event_name": "PreToolUse", "session_id": "s", "tool_name": "Bash",'
        ' "tool_input": {"command": "ls"}}'
    )
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    done = subprocess.run(
        [
            str(installed),
            "hook",
            "claude-code",
            "--server",
            "http://127.0.0.1:9",
            "--state",
            str(tmp_path / "state"),
        ],
        input=payload,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert '"permissionDecision": "deny"' in done.stdout
    assert "httpx" not in done.stdout and "No module" not in done.stdout
    assert "refused" in done.stdout.lower() or "connection" in done.stdout.lower()
