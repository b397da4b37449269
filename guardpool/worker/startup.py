"""A freshly forked worker made into a sandboxed one, before any guard code runs.

    zygote fork ─► setup_worker: signals, fds, workdir, cgroup, rlimits, nice
        ─► (as root) open_import_dirs ─► drop privileges ─► reach_import_dirs
        ─► no_new_privs, seccomp ─► the two sockets ─► main.Worker(...).serve()

The import-directory helpers live here because the privilege drop is what makes
them needed; ``probe.py`` reports what they did (``unreadable``, ``IMPORT_DIR_FDS``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

from guardpool.worker import cgroups, protocol, sandbox


def setup_worker(
    fds: tuple[int, ...],
    workdir: str,
    setup: protocol.Setup,
    seccomp: bool,
    cgroup: cgroups.WorkerCgroup,
) -> tuple[socket.socket, socket.socket]:
    """Make this freshly forked process a sandboxed worker; returns its two sockets
    (jobs in, answers out), from the host's ``fds``.

    Everything that needs root (the cgroup, rlimits) happens first, then the privilege
    drop, then the measures that must outlive it; no guard code has run yet.
    """
    zygote = os.getppid()
    # Die with the zygote (and so with the host): no orphaned worker can outlive them.
    sandbox.set_pdeathsig()
    os.setpgid(0, 0)  # own process group: one killpg takes the worker and its children
    for sig in (signal.SIGCHLD, signal.SIGPROF, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's to handle
    signal.set_wakeup_fd(-1)
    # Only fds 0-2 and the worker's two sockets survive: no zygote control socket, no
    # neighbour's pipe (each worker's pipe reaches exactly one worker).
    jobs_fd, answers_fd = fds
    if answers_fd == 3:
        answers_fd = os.dup(answers_fd)  # not overwritten by the first dup2
    os.dup2(jobs_fd, 3)
    os.dup2(answers_fd, 4)
    os.closerange(5, 1 << 16)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sandbox.set_workdir(workdir)
    import tempfile

    tempfile.tempdir = workdir
    cgroups.join(cgroup)
    sandbox.apply_rlimits(setup.memory_mb)
    if not cgroup.cpu:
        # No CPU cgroup to weigh a fork bomb as one task: lower the priority instead, so
        # its many runnable processes cannot starve the manager thread that kills them
        # (children inherit the nice value). With a CPU cgroup a guard keeps nice 0.
        os.setpriority(os.PRIO_PROCESS, 0, sandbox.WORKER_NICE)
    _EXISTING[:] = [p for p in sys.path if os.path.exists(p)]  # as root: what there is
    if setup.uid >= 0:
        dirs = open_import_dirs()
        sandbox.drop_privileges(setup.uid, setup.gid)
        reach_import_dirs(dirs)
        sandbox.set_pdeathsig()  # a uid change cleared it
        if os.getppid() != zygote:
            raise SystemExit(1)  # the zygote died in between: the death signal came too late
    sandbox.prctl(sandbox.PR_SET_NO_NEW_PRIVS, 1)
    if seccomp:
        try:
            sandbox.install_seccomp()
        except OSError as exc:  # reported by the doctor; the other measures still hold
            sandbox.STATUS["seccomp"] = str(exc)
    jobs = socket.socket(fileno=3)
    jobs.setblocking(True)
    answers = socket.socket(fileno=4)
    answers.setblocking(True)
    return jobs, answers


_EXISTING: list[str] = []  # sys.path entries that exist, seen before the privilege drop
IMPORT_DIR_FDS: list[int] = []  # O_PATH fds standing in for unreachable sys.path entries


def open_import_dirs() -> dict[str, int]:
    """An O_PATH fd for each import directory, opened while still root."""
    fds: dict[str, int] = {}
    for entry in sys.path:
        if entry and entry not in fds:
            with contextlib.suppress(OSError):  # absent, or a zip file: nothing to keep
                fds[entry] = os.open(entry, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return fds


def reach_import_dirs(fds: dict[str, int]) -> None:
    """Swap sys.path entries the new uid cannot reach for ``/proc/self/fd/N``.

    An interpreter installed below a private directory (pyenv under /root, mode 0700)
    is unreachable for an unprivileged uid, so every import not already done in the
    zygote would fail. The magic link jumps straight to the directory the fd holds;
    only the directories below it are permission-checked, and those are the world-
    readable library. Nothing else under the private directory becomes reachable.
    """
    used: set[int] = set()
    for i, entry in enumerate(sys.path):
        fd = fds.get(entry)
        if fd is None:
            continue
        try:
            os.stat(entry)
        except PermissionError:
            sys.path[i] = f"/proc/self/fd/{fd}"
            used.add(fd)
        except OSError:
            pass
    for fd in fds.values():
        if fd not in used:
            os.close(fd)
    IMPORT_DIR_FDS[:] = sorted(used)


def unreadable() -> list[str]:
    """Import path entries this (unprivileged) process cannot reach: imports from there fail."""
    out: list[str] = []
    for entry in (p for p in sys.path if p in _EXISTING or p.startswith("/proc/self/fd/")):
        try:
            os.stat(entry)
        except PermissionError:
            out.append(entry)
        except OSError:
            pass  # absent for root too (e.g. pythonXY.zip): nothing lost
    return out
