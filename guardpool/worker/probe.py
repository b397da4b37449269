"""``probe``: a job that reports which sandbox measures are in force in the worker running it.

``guardpool doctor`` and the pool tests submit ``guardpool.worker.probe:probe`` to a
real worker instead of guessing from the host, because what counts is what the
kernel actually applied to that process.
"""

from __future__ import annotations

import os
import resource
import socket
from typing import Any

from guardpool.policy import poolsettings
from guardpool.worker import sandbox


def _status_field(name: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return ""


def _network_blocked() -> str:
    """ "" if the worker can open an IPv4 TCP socket to loopback, else the error."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            # Port 9 (discard) is almost never open: "refused" proves the stack works,
            # "unreachable"/"not permitted" proves it does not exist for us.
            s.connect(("127.0.0.1", 9))
    except ConnectionRefusedError:
        return ""
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return ""


def _cgroup_lines() -> list[str]:
    with open("/proc/self/cgroup") as f:
        return [line.strip() for line in f if "pids" in line or line.startswith("0::")]


def _cpu_cgroup() -> str:
    """This worker's own CPU cgroup (v1 cpu hierarchy, or v2 with cpu enabled), or ""."""
    from guardpool.worker import cgroups

    try:
        mounts, own = cgroups._mounts(), cgroups._own_paths()
    except OSError:
        return ""
    path = own.get("cpu", "")
    if "guardpool-" in path:
        return path
    path = own.get("", "")
    v2 = mounts.get("cgroup2")
    if v2 and "guardpool-" in path and os.path.exists(f"{v2}{path}/cpu.weight"):
        return path
    return ""


def _pids_max() -> int | None:
    """pids.max of this worker's own cgroup (v1 pids hierarchy or v2), None without one."""
    from guardpool.worker import cgroups

    try:
        mounts, own = cgroups._mounts(), cgroups._own_paths()
    except OSError:
        return None
    for key, mount in (("pids", mounts.get("pids")), ("", mounts.get("cgroup2"))):
        if mount and key in own:
            try:
                with open(f"{mount}{own[key]}/pids.max") as f:
                    text = f.read().strip()
            except OSError:
                continue
            return int(text) if text.isdigit() else None
    return None


def probe(_: Any = None) -> dict[str, Any]:
    pid = os.getpid()
    limits = {
        name: resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))[0]
        for name in ("AS", "NOFILE", "NPROC", "FSIZE", "CORE")
    }
    from guardpool.worker import main as worker_main
    from guardpool.worker import startup

    return {
        "pid": pid,
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "cpu_cgroup": _cpu_cgroup(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "cwd_owner": os.stat(".").st_uid,
        "unreadable": startup.unreadable(),
        "import_dir_fds": list(startup.IMPORT_DIR_FDS),
        "cgroup": _cgroup_lines(),
        "pids_max": _pids_max(),
        "idle_poll_us": round(worker_main.IDLE_SPIN_S * 1e6),
        "cpus": poolsettings.usable_cpus(),  # what an unset idle_poll_us was decided on
        "own_process_group": os.getpgid(0) == pid,
        "no_new_privs": _status_field("NoNewPrivs") == "1",
        "seccomp_mode": int(_status_field("Seccomp") or 0),
        "rlimits": limits,
        "environment": sorted(os.environ),
        "cwd": os.getcwd(),
        "stdin": os.readlink("/proc/self/fd/0"),
        "open_fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "netns": os.readlink("/proc/self/ns/net"),
        "network_error": _network_blocked(),
        "pdeathsig": sandbox.get_pdeathsig(),
        "status": dict(sandbox.STATUS),
    }
