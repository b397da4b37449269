"""One cgroup per worker: a cap on processes (``pids.max``) and memory, and a kill that
reaches every process in it, however it detached itself from the worker.

Data flow::

  zygote start-up   pool_layout()  -> <host's cgroup>/guardpool-<zygote pid>/   (or a sibling, v2)
                    sweep_stale()  -> removes empty guardpool-<pid>/ of dead zygotes beside it
  zygote, per fork  create_worker() -> .../w<n>/ with pids.max and the memory cap
  worker, pre-guard join()          -> writes itself into cgroup.procs (still root)
  host, deadline    kill()          -> cgroup.kill (v2) or freeze + SIGKILL members (v1)
  zygote, on reap   remove()        -> kill again, rmdir (retried on the next reap if busy)

cgroup v2 is tried first; it needs the ``pids`` and ``memory`` controllers delegated
to the directory the pool creates. Otherwise the v1 ``pids`` hierarchy (plus
``memory`` and ``freezer`` when mounted) is used; with neither, ``Layout.reason``
says why and the doctor reports it. The host process itself is never moved: worker
cgroups are children of the host's cgroup (limits nest) or, on v2, its siblings.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
from typing import Literal

import msgspec

Mode = Literal["v2", "v1", ""]


class Layout(msgspec.Struct, frozen=True, array_like=True):
    """Where this pool's worker cgroups live; ``mode == ""`` means none (see ``reason``)."""

    mode: Mode
    roots: tuple[str, ...] = ()  # the pool directory in each hierarchy used
    controllers: tuple[str, ...] = ()  # per root: "v2", or the v1 controller (pids, ...)
    reason: str = ""  # why v2 (or any cgroup) is not used here; "" when v2 is


class WorkerCgroup(msgspec.Struct, frozen=True, array_like=True):
    """One worker's cgroup directories (one per v1 hierarchy, one for v2)."""

    mode: Mode
    dirs: tuple[str, ...]
    procs: str  # the cgroup.procs listing every member (v2: the one dir; v1: pids)
    freezer: str = ""  # v1 freezer directory, "" when not mounted
    # CPU grouping: the kernel schedules the whole cgroup as one entity, so a fork
    # bomb's hundred runnable processes weigh as much as one ordinary task. The
    # directory holding the CPU controller's files ("" when there is none).
    cpu: str = ""


NONE = WorkerCgroup("", (), "")


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _mounts() -> dict[str, str]:
    """Controller (or "cgroup2") -> mount point, from /proc/self/mountinfo."""
    found: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, options = [*right.split(), "", "", ""][:3]
            mountpoint = left.split()[4]
            if fstype == "cgroup2":
                found.setdefault("cgroup2", mountpoint)
            elif fstype == "cgroup":
                for opt in options.split(","):
                    found.setdefault(opt, mountpoint)
    return found


def _own_paths() -> dict[str, str]:
    """Controller ("" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    found: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                found[c] = path
    return found


def _v2_layout(name: str, mounts: dict[str, str], own: dict[str, str]) -> tuple[str, str]:
    """(pool directory, "") on success, ("", reason) when v2 cannot be used."""
    mount = mounts.get("cgroup2")
    if mount is None or "" not in own:
        return "", "no cgroup v2 hierarchy mounted"
    base = os.path.normpath(mount + own[""])
    try:
        available = _read(f"{base}/cgroup.controllers").split()
    except OSError as exc:
        return "", f"cgroup v2: cannot read {base}/cgroup.controllers: {exc.strerror}"
    missing = [c for c in ("pids", "memory") if c not in available]
    if missing:
        return "", f"cgroup v2: controller(s) {', '.join(missing)} not delegated to {base}"
    parent = ""
    try:
        _write(f"{base}/cgroup.subtree_control", "+pids +memory")
        parent = base
    except OSError as exc:
        # EBUSY: the host's own cgroup holds processes ("no internal processes" rule).
        # A sibling still nests under every limit above the host's cgroup.
        up = os.path.dirname(base)
        with contextlib.suppress(OSError):
            enabled = _read(f"{up}/cgroup.subtree_control").split()
            if base != mount and {"pids", "memory"} <= set(enabled):
                parent = up
        if not parent:
            return "", (
                f"cgroup v2: cannot enable pids/memory below {base} ({exc.strerror}) and its "
                "parent does not delegate them (run the host in a delegated cgroup)"
            )
    sweep_stale(parent)
    pool = f"{parent}/{name}"
    try:
        os.mkdir(pool)
        _write(f"{pool}/cgroup.subtree_control", "+pids +memory")
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.rmdir(pool)
        return "", f"cgroup v2: cannot create {pool}: {exc.strerror}"
    with contextlib.suppress(OSError):  # optional: group scheduling for the workers
        if parent == base:
            _write(f"{base}/cgroup.subtree_control", "+cpu")
        _write(f"{pool}/cgroup.subtree_control", "+cpu")
    return pool, ""


def pool_layout(name: str) -> Layout:
    """Create this pool's cgroup directory (v2, else v1); never raises."""
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as exc:
        return Layout("", reason=f"cannot read /proc/self cgroup information: {exc}")
    pool, why_not_v2 = _v2_layout(name, mounts, own)
    if pool:
        try:
            cpu = "cpu" in _read(f"{pool}/cgroup.subtree_control").split()
        except OSError:
            cpu = False
        return Layout("v2", (pool,), ("v2+cpu" if cpu else "v2",), "")
    if "pids" not in mounts or "pids" not in own:
        return Layout("", reason=f"{why_not_v2}; no cgroup v1 pids hierarchy either")
    roots: list[str] = []
    controllers: list[str] = []
    for controller in ("pids", "memory", "freezer", "cpu"):
        if controller not in mounts or controller not in own:
            continue
        parent = os.path.normpath(f"{mounts[controller]}{own[controller]}")
        sweep_stale(parent)
        path = f"{parent}/{name}"
        try:
            os.mkdir(path)
        except OSError as exc:
            if controller == "pids":
                return Layout("", reason=f"{why_not_v2}; cgroup v1: cannot create {path}: {exc}")
            continue  # memory/freezer/cpu are extras; pids is what bounds a fork bomb
        roots.append(path)
        controllers.append(controller)
    return Layout("v1", tuple(roots), tuple(controllers), why_not_v2)


# A pool directory's name: "guardpool-" and its zygote's pid (zygote.py).
_POOL_DIR = re.compile(r"guardpool-([0-9]{1,10})")


def sweep_stale(parent: str) -> int:
    """Remove pool directories under ``parent`` whose zygote is dead and which hold no
    process; how many went. Never raises.

    A zygote removes its directory when it exits and the host removes a dead
    zygote's (runner/healing.py), but when both die at once (the host SIGKILLed
    with its process group, a container stopped) nobody does: 51 such directories
    had piled up on one test machine, each with its worker cgroups. A directory
    goes only if its zygote's pid does not exist here and none of its worker
    cgroups has a member, and only by ``rmdir`` (the kernel refuses a non-empty
    cgroup): a live pool's pid exists, and nothing running is ever killed. (A pid
    reused since only keeps a stale directory; a pool in another pid namespace
    under the same parent with every worker gone at that moment could lose its
    directory, which its zygote then reports as a failed worker start.)
    """
    removed = 0
    try:
        names = os.listdir(parent)
    except OSError:
        return 0
    for name in names:
        found = _POOL_DIR.fullmatch(name)
        if found is None or os.path.exists(f"/proc/{found.group(1)}"):
            continue
        root = f"{parent}/{name}"
        try:
            workers = [f"{root}/{w}" for w in os.listdir(root) if os.path.isdir(f"{root}/{w}")]
            if any(_read(f"{w}/cgroup.procs").strip() for w in workers):
                continue
            for w in workers:
                os.rmdir(w)
            os.rmdir(root)
        except OSError:
            continue  # busy, or gone meanwhile: a later start tries again
        removed += 1
    return removed


def create_worker(layout: Layout, n: int, pids_max: int, memory_bytes: int) -> WorkerCgroup:
    """Make worker ``n``'s cgroup with its caps; raises OSError when the kernel refuses."""
    if not layout.mode:
        return NONE
    dirs: list[str] = []
    procs = freezer = cpu = ""
    try:
        for root, kind in zip(layout.roots, layout.controllers, strict=True):
            path = f"{root}/w{n}"
            os.mkdir(path)
            dirs.append(path)
            if kind in ("v2+cpu", "cpu"):
                cpu = path
            if kind.startswith("v2"):
                kind = "v2"
            if kind in ("v2", "pids"):
                _write(f"{path}/pids.max", str(pids_max))
                procs = f"{path}/cgroup.procs"
            if kind == "v2":
                _write(f"{path}/memory.max", str(memory_bytes))
                with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                    _write(f"{path}/memory.swap.max", "0")
            elif kind == "memory":
                _write(f"{path}/memory.limit_in_bytes", str(memory_bytes))
            elif kind == "freezer":
                freezer = path
    except OSError:
        for path in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(path)
        raise
    return WorkerCgroup(layout.mode, tuple(dirs), procs, freezer, cpu)


def join(cgroup: WorkerCgroup) -> None:
    """Move the calling process into its cgroup (in the worker, before any guard code)."""
    for path in cgroup.dirs:
        _write(f"{path}/cgroup.procs", "0")


def members(cgroup: WorkerCgroup) -> list[int]:
    if not cgroup.procs:
        return []
    try:
        return [int(p) for p in _read(cgroup.procs).split()]
    except OSError:
        return []


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def kill(cgroup: WorkerCgroup, leader: int = 0) -> None:
    """SIGKILL every process in the worker's cgroup; never raises.

    v2 has ``cgroup.kill`` (one write, no race with fork). v1 freezes the group first
    when the freezer is mounted, so no member can fork while the list is killed.
    ``leader`` is a member the caller has SIGKILLed already (the worker, killed at its
    deadline): if the list holds nothing else, nothing is left that could fork (the
    kernel refuses ``fork`` to a process with SIGKILL pending), so the freeze, the
    second read and the thaw (0.6 ms of the manager's time after every deadline kill)
    are skipped. An empty cgroup gains no member by itself either.
    """
    if not cgroup.mode:
        return
    if cgroup.mode == "v2":
        try:
            _write(f"{cgroup.dirs[0]}/cgroup.kill", "1")
            return
        except OSError:
            pass  # kernel < 5.14: fall through to the list
    if set(members(cgroup)) <= {leader}:
        return
    frozen = False
    if cgroup.freezer:
        with contextlib.suppress(OSError):
            _write(f"{cgroup.freezer}/freezer.state", "FROZEN")
            frozen = True
    try:
        seen: set[int] = set()
        # Bounded: pids.max bounds the members, and each round kills all it sees.
        for _ in range(16):
            pids = members(cgroup)
            if not pids or set(pids) <= seen:
                return
            _kill_all(pids)
            seen.update(pids)
    finally:
        if frozen:  # frozen tasks die of their SIGKILL only once thawed
            with contextlib.suppress(OSError):
                _write(f"{cgroup.freezer}/freezer.state", "THAWED")


def lower_weight(cgroup: WorkerCgroup) -> None:
    """Give a killed worker's cgroup the least CPU weight; never raises.

    A SIGKILLed worker still spends milliseconds of CPU tearing down its address
    space (3-8 ms measured on a 2-core VM), in its own cgroup; at the lowest weight
    that teardown waits while the spare serves the next job.
    """
    if not cgroup.cpu:
        return
    name, value = ("cpu.weight", "1") if cgroup.mode == "v2" else ("cpu.shares", "2")
    with contextlib.suppress(OSError):
        _write(f"{cgroup.cpu}/{name}", value)


def remove(cgroup: WorkerCgroup) -> bool:
    """Kill what is left and remove the directories; False while some are still busy."""
    if not cgroup.mode:
        return True
    kill(cgroup)
    done = True
    for path in cgroup.dirs:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            done = False
    return done


def remove_pool(layout: Layout) -> None:
    for root in layout.roots:
        with contextlib.suppress(OSError):
            os.rmdir(root)


def remove_tree(layout: Layout) -> bool:
    """Kill and remove a pool directory with every worker cgroup in it; never raises.

    For the host when a zygote died and cannot clean up after itself. False while some
    directory is still busy (members still dying): call again later.
    """
    done = True
    for root in layout.roots:
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            continue
        except OSError:
            done = False
            continue
        for name in names:
            path = f"{root}/{name}"
            if not os.path.isdir(path):
                continue
            with contextlib.suppress(OSError):
                _kill_all([int(p) for p in _read(f"{path}/cgroup.procs").split()])
            with contextlib.suppress(OSError):
                _write(f"{path}/freezer.state", "THAWED")  # frozen members cannot die
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        try:
            os.rmdir(root)
        except FileNotFoundError:
            pass
        except OSError:
            done = False
    return done
