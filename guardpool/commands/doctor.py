"""``guardpool doctor``: which sandbox measures are in force on this machine, and why not.

It does not guess from the host: it starts a real one-worker pool at the requested
hardening level and runs ``guardpool.worker.probe:probe`` inside the worker, so
every line reflects what the kernel actually applied to a guard's process.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from guardpool.cli import EXIT_DENIED, EXIT_OK, UsageError
from guardpool.policy.bounds import MAX_MEMORY_MB, MIN_MEMORY_MB

PROBE = "guardpool.worker.probe:probe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hardening",
        choices=("standard", "strict"),
        default="strict",
        help="level to probe (default: strict, which includes every standard measure)",
    )
    parser.add_argument("--memory-mb", type=int, default=256, help="RLIMIT_AS to apply")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _measure(name: str, active: bool, detail: str, *, expected: bool = True) -> dict[str, Any]:
    return {"measure": name, "active": active, "detail": detail, "expected": expected}


def measures(info: dict[str, Any], hardening: str, memory_mb: int) -> list[dict[str, Any]]:
    """Each sandbox measure as active / not active with the reason, from a probe result."""
    limits = info["rlimits"]
    status = info["status"]
    strict = hardening == "strict"
    out = [
        _measure(
            "own process group",
            info["own_process_group"],
            "worker pgid == pid: one killpg(SIGKILL) at the deadline reaches its children",
        ),
        _measure(
            "die with the pool",
            info["pdeathsig"] == 9,
            "PR_SET_PDEATHSIG=SIGKILL; the zygote also kills every worker on host EOF",
        ),
        _measure(
            "no new privileges",
            info["no_new_privs"],
            "PR_SET_NO_NEW_PRIVS: setuid binaries cannot raise privileges",
        ),
        _measure(
            "RLIMIT_AS (memory)",
            limits["AS"] == memory_mb << 20,
            f"{limits['AS'] >> 20} MiB address space; a bomb gets MemoryError",
        ),
        _measure("RLIMIT_NOFILE", limits["NOFILE"] <= 256, f"{limits['NOFILE']} open files"),
        _measure(
            "RLIMIT_FSIZE", limits["FSIZE"] <= 64 << 20, f"{limits['FSIZE'] >> 20} MiB per file"
        ),
        _measure("RLIMIT_CORE", limits["CORE"] == 0, "no core dumps (memory holds hostile input)"),
    ]
    host_root = os.geteuid() == 0
    if info["uid"] != 0:
        how = (
            f"started as root, workers dropped to uid {info['uid']} gid {info['gid']}, "
            f"supplementary groups {info['groups'] or 'cleared'}"
            if host_root
            else f"host is not root: workers run as its uid {info['uid']} (nothing to drop)"
        )
        out.append(_measure("unprivileged worker", True, how))
        out.append(_measure("RLIMIT_NPROC", True, f"{limits['NPROC']} processes for this uid"))
    else:
        out.append(_measure("unprivileged worker", False, "workers run as root"))
        out.append(
            _measure(
                "RLIMIT_NPROC",
                False,
                f"set to {limits['NPROC']}, but the kernel exempts root from it",
            )
        )
    if info.get("unreadable"):
        out.append(
            _measure(
                "import path readable",
                False,
                f"uid {info['uid']} cannot read {', '.join(info['unreadable'])}: guard modules "
                "from there must be preloaded ([pool] preload) or made readable",
                expected=False,
            )
        )
    cpu_cgroup = info.get("cpu_cgroup", "")
    out.append(
        _measure(
            "CPU cannot starve the host",
            bool(cpu_cgroup) or info.get("nice", 0) > 0,
            f"CPU cgroup {cpu_cgroup}: a fork bomb weighs as one task against the host"
            if cpu_cgroup
            else f"nice {info.get('nice', 0)}: a busy guard (or a fork bomb) yields the CPU to "
            "the host's deadline kill",
        )
    )
    mode = status.get("cgroup_mode", "")
    out.append(
        _measure(
            "cgroup per worker",
            bool(mode),
            f"cgroup {mode}: pids.max {info.get('pids_max')}, memory capped, killed as a group"
            if mode
            else f"not available: {status.get('cgroup') or 'unknown'}; a fork bomb is bounded "
            "only by RLIMIT_NPROC (not for root) and the deadline kill",
            expected=host_root,
        )
    )
    env = info["environment"]
    out += [
        _measure(
            "scrubbed environment",
            set(env) <= {"PATH", "HOME", "TMPDIR", "LANG"},
            f"worker sees only {', '.join(env)}",
        ),
        _measure(
            "private working directory",
            "guardpool-" in info["cwd"],
            f"{info['cwd']} (removed when the worker exits)",
        ),
        _measure("stdin from /dev/null", info["stdin"] == "/dev/null", info["stdin"]),
        _measure(
            "no inherited descriptors",
            # stdio, the two sockets, and the descriptor that lists /proc/self/fd
            len(set(info["open_fds"]) - set(info.get("import_dir_fds", ()))) <= 6,
            f"open fds: {info['open_fds']} (stdio, the worker's own two sockets"
            + (
                f"; O_PATH import directories {info['import_dir_fds']})"
                if info.get("import_dir_fds")
                else ")"
            ),
        ),
        _measure("CPU budget (ITIMER_PROF)", True, "SIGPROF at default disposition per job"),
        _measure("wall deadline (SIGKILL)", True, "enforced by the host's pool manager"),
    ]
    netns_active = strict and status.get("netns") == "" and bool(info["network_error"])
    out.append(
        _measure(
            "network namespace",
            netns_active,
            f"empty netns: {info['network_error']}"
            if netns_active
            else status.get("netns") or "not isolated",
            expected=strict,
        )
    )
    seccomp_active = info["seccomp_mode"] == 2
    out.append(
        _measure(
            "seccomp filter",
            seccomp_active,
            "deny-list: kernel admin, ptrace, bpf, io_uring, AF_INET/AF_INET6 sockets -> EPERM"
            if seccomp_active
            else status.get("seccomp") or "not installed",
            expected=strict,
        )
    )
    return out


def main(args: argparse.Namespace) -> int:
    from guardpool.runner.pool import GuardPool

    if not MIN_MEMORY_MB <= args.memory_mb <= MAX_MEMORY_MB:
        # Below the floor every worker dies before it is ready (the pool reports
        # itself broken); the policy loader refuses such a memory_mb the same way.
        raise UsageError(
            f"--memory-mb must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}, not {args.memory_mb}"
            f" (a worker needs about 22 MiB of address space to start)"
        )
    with GuardPool(workers=1, memory_mb=args.memory_mb, hardening=args.hardening) as pool:
        result = pool.submit(PROBE, None, timeout_ms=5000).result()
    if result.outcome != "ok":
        print(f"guardpool doctor: the probe failed in the worker: {result.error}")
        return EXIT_DENIED
    info = result.value
    found = measures(info, args.hardening, args.memory_mb)
    missing = [m for m in found if m["expected"] and not m["active"]]
    if args.json:
        print(json.dumps({"hardening": args.hardening, "probe": info, "measures": found}))
        return EXIT_DENIED if missing else EXIT_OK
    print(
        f"guardpool doctor: hardening={args.hardening}, probed worker pid {info['pid']} "
        f"(uid {info['uid']}, host pid {os.getpid()})"
    )
    for m in found:
        state = "active    " if m["active"] else "NOT ACTIVE"
        print(f"  {state}  {m['measure']:<27} {m['detail']}")
    if missing:
        print(f"{len(missing)} expected measure(s) not active here.")
        return EXIT_DENIED
    return EXIT_OK
