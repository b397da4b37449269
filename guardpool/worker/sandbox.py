"""Sandbox measures applied in the zygote (once) and in each worker (after fork).

Everything here is plain syscalls through ``ctypes``/``resource`` so that a
worker's set-up costs microseconds, which keeps respawn after a kill fast.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource
import signal
import struct
from typing import Final, NamedTuple

PR_SET_PDEATHSIG: Final = 1
PR_GET_PDEATHSIG: Final = 2
PR_SET_CHILD_SUBREAPER: Final = 36
PR_SET_NO_NEW_PRIVS: Final = 38
PR_SET_SECCOMP: Final = 22
SECCOMP_MODE_FILTER: Final = 2
CLONE_NEWNET: Final = 0x40000000

NOFILE_LIMIT: Final = 256
NPROC_LIMIT: Final = 128
FSIZE_LIMIT: Final = 64 << 20
WORKER_NICE: Final = 10  # CFS weight 110 against the host's 1024

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

# Why a process-wide measure is off, filled in by the zygote before it forks, so that
# every worker (and the doctor's probe running in one) can report it: "" = active.
STATUS: dict[str, str] = {}


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg2), 0, 0, 0), f"prctl({option})")


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def get_pdeathsig() -> int:
    sig = ctypes.c_int(0)
    _check(_libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0), "prctl(PR_GET_PDEATHSIG)")
    return sig.value


def set_child_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def unshare_network() -> None:
    """Move the calling process into a fresh, empty network namespace (root or userns)."""
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def apply_rlimits(memory_mb: int) -> None:
    # RLIMIT_AS turns a memory bomb into MemoryError instead of the OOM killer picking
    # a victim (possibly the host). CORE 0: a crashing guard must not write its memory,
    # which holds hostile input, to disk. NPROC is not enforced for root (see doctor).
    limits = (
        (resource.RLIMIT_AS, memory_mb << 20),
        (resource.RLIMIT_NOFILE, NOFILE_LIMIT),
        (resource.RLIMIT_NPROC, NPROC_LIMIT),
        (resource.RLIMIT_FSIZE, FSIZE_LIMIT),
        (resource.RLIMIT_CORE, 0),
    )
    for which, value in limits:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def scrub_environment() -> None:
    """Keep no inherited secrets (API keys, tokens) in a process that reads hostile input.

    Done once in the zygote (after preload, which may read its configuration from the
    environment), so a fork only sets the two per-worker variables.
    """
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8")


def set_workdir(workdir: str) -> None:
    os.chdir(workdir)
    os.environ["HOME"] = workdir
    os.environ["TMPDIR"] = workdir


# -- privileges -----------------------------------------------------------------------------


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good: supplementary groups cleared, real = effective = saved.

    Order matters: groups and gid while still root, uid last. A uid change clears
    ``PR_SET_PDEATHSIG`` and the dumpable flag (the kernel's rule), so the caller sets
    the death signal again afterwards.
    """
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getgroups():
        raise OSError(f"privilege drop to uid {uid} did not hold")


# -- seccomp --------------------------------------------------------------------------------

_RET_ALLOW: Final = 0x7FFF0000
_RET_KILL_PROCESS: Final = 0x80000000
_RET_EPERM: Final = 0x00050000 | 1
_LD_W_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_JGE_K: Final = 0x35
_RET_K: Final = 0x06
_X32_BIT: Final = 0x40000000
_AF_INET: Final = 2
_AF_INET6: Final = 10

# Syscalls a guard never needs: kernel/namespace/mount administration, debugging other
# processes, eBPF, io_uring (bypasses seccomp argument checks), keyrings. Names map to
# (x86_64, aarch64) numbers; None where the architecture has no such call. The aarch64
# numbers are the generic table (include/uapi/asm-generic/unistd.h).
_DENIED: Final[dict[str, tuple[int | None, int | None]]] = {
    "ptrace": (101, 117),
    "acct": (163, 89),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "iopl": (172, None),
    "ioperm": (173, None),
    "init_module": (175, 105),
    "delete_module": (176, 106),
    "quotactl": (179, 60),
    "kexec_load": (246, 104),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    "unshare": (272, 97),
    "perf_event_open": (298, 241),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "setns": (308, 268),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "finit_module": (313, 273),
    "kexec_file_load": (320, 294),
    "bpf": (321, 280),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
}


class _Arch(NamedTuple):
    audit: int  # AUDIT_ARCH_* the kernel reports in seccomp_data.arch
    column: int  # index into _DENIED's tuples
    socket: int  # socket(2)'s number
    x32: bool  # x86_64 only: refuse the x32 ABI's aliased numbers


ARCHES: Final[dict[str, _Arch]] = {
    "x86_64": _Arch(0xC000003E, 0, 41, True),
    "aarch64": _Arch(0xC00000B7, 1, 198, False),
}


def strict_unsupported_reason(machine: str | None = None) -> str:
    """Why ``hardening = "strict"`` cannot hold on this CPU architecture, "" when it can."""
    machine = machine if machine is not None else platform.machine()
    if machine in ARCHES:
        return ""
    return (
        f'hardening = "strict" needs the seccomp filter, written for '
        f"{' and '.join(sorted(ARCHES))}; this machine is {machine or 'unknown'}"
    )


def seccomp_unavailable_reason() -> str:
    """Why the seccomp filter cannot be installed here, or "" when it can."""
    reason = strict_unsupported_reason()
    if reason:
        return reason
    try:
        with open("/proc/self/status") as f:
            if "Seccomp:" not in f.read():
                return "kernel built without CONFIG_SECCOMP"
    except OSError as exc:
        return f"cannot read /proc/self/status: {exc}"
    return ""


def seccomp_program(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """A classic-BPF deny-list: EPERM for the syscalls above and for AF_INET/AF_INET6 sockets.

    Kept as a deny-list (not an allow-list) so that any pure-Python guard and the
    C extensions it imports keep working; the network namespace does the heavy lifting
    for network access, this is the second lock.
    """
    arch = ARCHES[machine if machine is not None else platform.machine()]
    denied = sorted({nr for nrs in _DENIED.values() if (nr := nrs[arch.column]) is not None})
    prog: list[tuple[int, int, int, int]] = []
    # [0] arch check: another ABI (32-bit compat) would reinterpret every number below.
    prog.append((_LD_W_ABS, 0, 0, 4))
    prog.append((_JEQ_K, 1, 0, arch.audit))
    prog.append((_RET_K, 0, 0, _RET_KILL_PROCESS))
    prog.append((_LD_W_ABS, 0, 0, 0))  # syscall nr
    n_tail = 5  # socket-check block (4) + ALLOW (1) between the list and the EPERM return
    if arch.x32:
        # x32 syscalls alias the x86_64 ones with bit 30 set: refuse them all.
        prog.append((_JGE_K, len(denied) + 1 + n_tail - 1, 0, _X32_BIT))
    for i, nr in enumerate(denied):
        to_eperm = (len(denied) - i - 1) + 1 + n_tail - 1
        prog.append((_JEQ_K, to_eperm, 0, nr))
    # socket(AF_INET|AF_INET6, ...) -> EPERM; other families (AF_UNIX) stay allowed.
    prog.append((_JEQ_K, 0, 3, arch.socket))
    prog.append((_LD_W_ABS, 0, 0, 16))  # args[0], low 32 bits (both are little endian)
    prog.append((_JEQ_K, 2, 0, _AF_INET))
    prog.append((_JEQ_K, 1, 0, _AF_INET6))
    prog.append((_RET_K, 0, 0, _RET_ALLOW))
    prog.append((_RET_K, 0, 0, _RET_EPERM))
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install_seccomp() -> None:
    """Install the filter on the calling process (needs PR_SET_NO_NEW_PRIVS first)."""
    prog = seccomp_program()
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p).value)
    rc = _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)
    _check(rc, "prctl(PR_SET_SECCOMP)")
