"""Pool cgroup directories left by zygotes that died with their host are removed by
the next pool that starts beside them (worker/cgroups.sweep_stale), and nothing else is.

Real cgroups as root; the pool's zygote does the sweep when it lays out its own directory.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardpool import GuardPool
from guardpool.worker import cgroups
from tests.test_pool_hostile import IS_ROOT, _pids_hierarchy, members

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _own_pids_dir() -> Path:
    """Where this process's zygotes put their pool directories in the pids hierarchy."""
    mount = _pids_hierarchy()
    if not IS_ROOT or not mount:
        if os.environ.get("CI"):
            pytest.fail("CI must be able to create cgroups (root, pids controller)")
        pytest.skip("needs root and a pids cgroup controller")
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            if "pids" in controllers.split(",") or (mount == "/sys/fs/cgroup" and not controllers):
                return Path(os.path.normpath(mount + path))
    pytest.fail("no pids line in /proc/self/cgroup")


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@contextlib.contextmanager
def _pool_dir(parent: Path, pid: int, workers: int) -> Iterator[Path]:
    root = parent / f"guardpool-{pid}"
    root.mkdir()
    for n in range(workers):
        (root / f"w{n}").mkdir()
    try:
        yield root
    finally:
        for w in root.glob("w*") if root.exists() else []:
            for member in members(w):  # only our own sleeping child is ever put there
                with contextlib.suppress(OSError):
                    (parent / "cgroup.procs").write_text(str(member))
            with contextlib.suppress(FileNotFoundError):
                w.rmdir()
        with contextlib.suppress(FileNotFoundError):
            root.rmdir()


def test_a_new_pool_sweeps_dead_zygotes_empty_directories_and_nothing_else() -> None:
    parent = _own_pids_dir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with (
            _pool_dir(parent, _dead_pid(), 2) as stale,
            _pool_dir(parent, _dead_pid(), 1) as busy,
            _pool_dir(parent, sleeper.pid, 1) as live,
        ):
            # A dead zygote's directory that still holds a process stays: never killed.
            (busy / "w0" / "cgroup.procs").write_text(str(sleeper.pid))
            assert members(busy / "w0") == [sleeper.pid]
            with GuardPool(workers=1) as pool:
                assert pool.submit("builtins:len", "abc").result(timeout=10).value == 3
            assert not stale.exists()
            assert busy.exists() and members(busy / "w0") == [sleeper.pid]
            assert live.exists()  # its pid is alive: a pool that may still be running
            assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sweep_stale_counts_what_it_removed_and_never_raises(tmp_path: Path) -> None:
    parent = _own_pids_dir()
    with _pool_dir(parent, _dead_pid(), 1) as stale, _pool_dir(parent, os.getpid(), 0) as mine:
        assert cgroups.sweep_stale(str(parent)) >= 1
        assert not stale.exists() and mine.exists()
    assert cgroups.sweep_stale(str(tmp_path / "missing")) == 0
    # Names that only look like pool directories are left alone.
    (tmp_path / "guardpool-x1").mkdir()
    (tmp_path / "guardpool-test-1-2").mkdir()
    assert cgroups.sweep_stale(str(tmp_path)) == 0
    assert (tmp_path / "guardpool-x1").exists()
