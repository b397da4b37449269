"""Shared fixtures: real redis-server and PostgreSQL servers on free loopback ports, a fresh
SQLite path.

The servers die with the test run. Each is started with a parent-death signal
(``die_with_parent``: Linux's PR_SET_PDEATHSIG), so a pytest process that is
SIGKILLed or cut short by a timeout takes its servers with it: a PostgreSQL
server was found running with ppid 1, hours after the helper run that started it
was cut short. The signal fires when the *thread* that forked the server exits,
so servers are started from the main thread only (``_main_thread_only``; pytest
runs fixtures and tests there). PostgreSQL's directory is made in /tmp (its
``postgres`` OS user must reach it) and named after the pytest pid; a later run
removes the directories of pids that are gone whose server is gone too
(``sweep_stale_pg_dirs``).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls into it


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when the thread that started it exits.

    Runs in the child after fork (and after ``user=``'s setuid, which would clear
    the setting), before exec; a non-setuid binary keeps it across exec. If the
    parent died between fork and prctl, the child is already orphaned: it kills
    itself rather than live on.
    """
    _main_thread_only()
    parent = os.getpid()

    def preexec() -> None:
        if _LIBC.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def _main_thread_only() -> None:
    if threading.current_thread() is not threading.main_thread():
        # The parent-death signal would fire when this thread ends, not the run.
        raise RuntimeError("test servers are started from the main thread only")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server subprocess that tests can stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),  # no state to keep: SIGKILL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """SIGKILL: the server vanishes as in a crash, without a goodbye."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a hung host)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if os.environ.get("GUARDPOOL_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not installed (GUARDPOOL_REQUIRE_REDIS=1)")
        pytest.skip("redis-server is not installed; .ci/run installs it")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied (FLUSHDB) for this test, running even if a test stopped it."""
    import redis

    if redis_server.proc is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A database path in a fresh directory (WAL adds -wal and -shm files beside it)."""
    return tmp_path / "budgets.db"


class ManualClock:
    """A store clock (milliseconds) that moves only when a test moves it.

    Stores read time through the clock they are given, so a test advances it
    instead of sleeping, as the ``limits`` library's tests freeze time.
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the workers can write to: as root they run as an unprivileged uid."""
    path = Path(tempfile.mkdtemp(prefix="guardpool-test-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


# -- PostgreSQL ---------------------------------------------------------------------------------

PG_PASSWORD = "guardpool-test-secret"


def postgres_bindir() -> str | None:
    """A directory holding both ``initdb`` and ``postgres`` of one installation.

    PATH first (resolving symlinks such as /usr/local/bin/postgres), then Debian's
    /usr/lib/postgresql/<major>/bin, newest major first: the two binaries must come
    from the same version or initdb refuses to work with the server.
    """
    candidates: list[str] = []
    for name in ("postgres", "initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            candidates.append(os.path.dirname(os.path.realpath(found)))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    debian.sort(key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    candidates.extend(reversed(debian))
    for d in candidates:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "postgres")):
            return d
    return None


class PostgresServer:
    """A PostgreSQL cluster made by initdb in a private directory, run on a free port.

    As root (CI) the server runs as the unprivileged ``postgres`` OS user, which
    PostgreSQL insists on. TCP connections need a password (SCRAM), which tests pass
    through ``PGPASSWORD`` (never in a URL); the Unix socket lives in the private
    directory, not in /var/run/postgresql. ``fsync`` is on unless ``fast``.
    """

    def __init__(self, bindir: str, *, fast: bool = True) -> None:
        self.bindir = bindir
        self.fast = fast
        self.port = free_port()
        sweep_stale_pg_dirs()
        self.root = Path(tempfile.mkdtemp(prefix=f"{PG_DIR_PREFIX}{os.getpid()}-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: str | None = None
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root needs the 'postgres' OS user (Debian's postgresql "
                    "package creates it; .ci/run installs it)"
                ) from None
            self.user = "postgres"
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.sockets.mkdir()
        if self.user is not None:
            shutil.chown(self.sockets, self.user)
        self.log = self.root / "server.log"
        self._initdb()

    @property
    def url(self) -> str:
        """Host, port, user and database; the password comes from PGPASSWORD."""
        return f"postgresql://guardpool@127.0.0.1:{self.port}/guardpool"

    @property
    def admin_url(self) -> str:
        """The superuser over the private Unix socket (peer-free: trust on local)."""
        return f"postgresql:///postgres?host={self.sockets}&port={self.port}&user=postgres"

    def _run(self, argv: list[str]) -> None:
        subprocess.run(
            argv,
            check=True,
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.root,
        )

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self.user is not None:
            shutil.chown(pwfile, self.user)
        try:
            self._run(
                [
                    os.path.join(self.bindir, "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--pwfile",
                    str(pwfile),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from None
        pwfile.unlink()

    def start(self) -> None:
        argv = [
            os.path.join(self.bindir, "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.sockets),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=32MB",
        ]
        if self.fast:
            # fsync=off survives a killed server (the OS keeps the pages), not a power
            # loss; synchronous_commit stays on, or a kill could take back commits.
            argv += ["-c", "fsync=off"]
        with open(self.log, "ab") as log:
            # SIGQUIT is PostgreSQL's immediate shutdown: the postmaster stops its
            # backends and removes its shared memory, which a SIGKILL would leave.
            self.proc = subprocess.Popen(
                argv,
                user=self.user,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGQUIT),
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            if self._ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not start: {self.log.read_text()[-2000:]}")

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def bootstrap(self) -> None:
        """The application role and database (once, as the superuser)."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE guardpool LOGIN PASSWORD '{PG_PASSWORD}'")
            conn.execute("CREATE DATABASE guardpool OWNER guardpool")

    def _signal_all(self, sig: int) -> None:
        """Send ``sig`` to the postmaster and every backend. Each backend calls setsid(),
        so a process group does not reach them: walk the process tree instead."""
        import psutil

        assert self.proc is not None
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)

    def stop(self) -> None:
        """SIGKILL to the postmaster and all its backends: a crash, no shutdown checkpoint."""
        if self.proc is not None:
            self._signal_all(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP to every server process: connections stay open, nothing answers."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


PG_DIR_PREFIX = "guardpool-pg-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_pg_dirs(tmp: str | None = None) -> list[Path]:
    """Remove ``guardpool-pg-<pid>-*`` directories whose pytest and server are both gone.

    Only directories named after a pid (older ones carry no pid: left alone), only
    when that pid is dead and the ``postmaster.pid`` inside names no live process
    (or there is none). Nothing is killed. Returns what was removed.
    """
    removed = []
    for d in Path(tmp or tempfile.gettempdir()).glob(f"{PG_DIR_PREFIX}*-*"):
        owner = d.name[len(PG_DIR_PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or _alive(int(owner)):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            server = int((d / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
            if _alive(server):
                continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        if os.environ.get("GUARDPOOL_REQUIRE_POSTGRES") == "1":
            pytest.fail("initdb/postgres not found and GUARDPOOL_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL is not installed; .ci/run installs it")
    try:
        server = PostgresServer(bindir)
        server.start()
        server.bootstrap()
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"cannot start PostgreSQL from {bindir}: {exc}")
    # libpq (and so every process a test starts) reads the password from here.
    old = os.environ.get("PGPASSWORD")
    os.environ["PGPASSWORD"] = PG_PASSWORD
    yield server
    if old is None:
        os.environ.pop("PGPASSWORD", None)
    else:
        os.environ["PGPASSWORD"] = old
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The session's PostgreSQL, running even if a test stopped it."""
    if postgres_server.proc is None:
        postgres_server.start()
    return postgres_server.url


@pytest.fixture
def pg_schema() -> str:
    """A schema name of this test's own: tests share the server, never their tables."""
    return "t_" + uuid.uuid4().hex[:12]
