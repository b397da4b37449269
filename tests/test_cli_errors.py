"""Every user error on the command line is one line on stderr and exit 2; a bug is exit 70.

Each case used to end in a traceback: a store or ledger that cannot be opened,
a preload module that does not exist, a bad Redis URL, non-UTF-8 bytes in argv,
a port in use, a ledger event nested too deeply to read.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from guardpool import cli

from .conftest import PostgresServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str | bytes, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "guardpool", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def one_line_exit_2(out: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 2, (out.returncode, err)
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def policy(tmp_path: Path, extra: dict[str, object] | None = None) -> Path:
    config: dict[str, object] = {
        "guard": [{"name": "keys", "ops": ["*"], "deny_regex": ["AKIA[0-9A-Z]{16}"]}],
        "store": {"backend": "sqlite", "path": str(tmp_path / "g.db")},
        "audit": {"path": str(tmp_path / "g.db")},
    }
    for section, values in (extra or {}).items():
        base = config.get(section)
        config[section] = {**base, **values} if isinstance(base, dict) else values  # type: ignore[dict-item]
    p = tmp_path / "p.json"
    p.write_text(json.dumps(config))
    return p


def check(config: Path, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return run("check", "--config", str(config), "--label", "exe:llm:x", "--input", "hi", *args)


def test_a_store_file_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    p = policy(tmp_path, {"store": {"path": str(tmp_path / "dir.db")}})
    one_line_exit_2(check(p), "budget store")


def test_a_ledger_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "ledger").mkdir()
    p = policy(tmp_path, {"audit": {"path": str(tmp_path / "ledger")}})
    one_line_exit_2(check(p), "ledger")


def test_a_missing_preload_module_names_the_key(tmp_path: Path) -> None:
    p = policy(tmp_path, {"pool": {"preload": ["no_such_module_anywhere"]}})
    one_line_exit_2(check(p), "pool.preload[0]", "no_such_module_anywhere")


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:99999/0", "http://127.0.0.1/0", "redis:///0", "redis://h/x"]
)
def test_a_bad_redis_url_names_the_key(tmp_path: Path, url: str) -> None:
    p = policy(tmp_path, {"store": {"backend": "redis", "url": url}})
    one_line_exit_2(check(p), "store.url", "bad Redis URL")


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"pool": {"memory_mb": 1}}, "pool.memory_mb"),
        ({"pool": {"workers": 100_000}}, "pool.workers"),
        ({"pool": {"max_rss_mb": 512, "memory_mb": 256}}, "pool.max_rss_mb"),
        ({"limits": {"x": {"tokens": 2**63}}}, 'limits."x".tokens'),
        ({"limits": {"x": {"dimensions": {"rows": 2**63}}}}, 'limits."x".dimensions.rows'),
        ({"limits": {"x": {"cost": "1e999999"}}}, 'limits."x".cost'),
        ({"limits": {"op:net:w\n": {"calls": 1}}}, 'limits."op:net:w\\n"'),
        ({"guards": {"regex_max_mem": 2**63}}, "guards.regex_max_mem"),
    ],
)
def test_config_values_out_of_bounds_name_the_key(
    tmp_path: Path, config: dict[str, object], key: str
) -> None:
    one_line_exit_2(check(policy(tmp_path, config)), key)


def test_a_json_config_with_a_huge_integer(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text('{"pool": {"workers": ' + "9" * 5000 + "}}")
    one_line_exit_2(check(p), "invalid JSON")


def test_a_toml_config_nested_too_deeply(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    out = check(p)
    one_line_exit_2(out)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--input", b"caf\xe9"),
        ("--label", b"op:\xff"),
        ("--run", b"r\xff"),
        ("--principal", b"\xfe"),
    ],
)
def test_non_utf8_bytes_in_argv_are_refused(tmp_path: Path, flag: str, value: bytes) -> None:
    p = policy(tmp_path)
    base: list[str | bytes] = ["check", "--config", str(p), "--json"]
    if flag != "--input":
        base += ["--input", "hi"]
    if flag != "--label":
        base += ["--label", "exe:llm:x"]
    out = run(*base, flag.encode(), value)
    one_line_exit_2(out, flag)


def test_a_hostile_label_is_refused_with_the_reason(tmp_path: Path) -> None:
    out = run("check", "--config", str(policy(tmp_path)), "--label", "op:net:w\n", "--input", "x")
    one_line_exit_2(out, "--label", "U+000A")


def test_estimates_are_bounded(tmp_path: Path) -> None:
    out = check(policy(tmp_path), "--estimate-tokens", str(2**63))
    one_line_exit_2(out, "--estimate-tokens", "10^15")
    out = check(policy(tmp_path), "--estimate-cost", "9" * 100)
    one_line_exit_2(out, "--estimate-cost")


def test_serve_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run("serve", "--config", str(policy(tmp_path)), "--port", str(port), "--no-auth")
    one_line_exit_2(out, f"127.0.0.1:{port}")


def test_audit_show_and_verify_on_an_event_nested_too_deeply(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    # msgspec encodes a few levels deeper than it decodes: such an event could be
    # written and then not read back (RecursionError, a traceback, before). The
    # writer now refuses it (tests/test_audit_depth.py); a ledger from an older
    # guardpool may still hold one, so the row is inserted here past the writer.
    # Written in a fresh process: how deep msgspec goes depends on the stack.
    write = (
        "import sqlite3\n"
        "from guardpool.audit.chain import encode_event\n"
        "from guardpool.audit.events import AuditEvent\n"
        "from guardpool.audit.ledger import Ledger\n"
        "nested = 'leaf'\n"
        "for _ in range(990):\n"
        "    nested = [nested]\n"
        "ev = AuditEvent(kind='check', run_id='r', detail={'x': nested})\n"
        f"Ledger({str(db)!r}).close()\n"
        f"conn = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "Ledger._insert(conn, [ev], [encode_event(ev)])\n"
        "conn.execute('COMMIT')\n"
    )
    subprocess.run([sys.executable, "-c", write], cwd=ROOT, check=True, timeout=60)
    one_line_exit_2(run("audit", "show", "r", "--db", str(db)), "nested too deeply")
    out = run("audit", "verify", "--db", str(db))
    assert out.returncode == 1 and b"Traceback" not in out.stderr
    assert b"nested too deeply" in out.stdout + out.stderr


def test_a_bug_is_a_traceback_with_a_request_to_report_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A command whose main() has a genuine bug (a KeyError), registered like any other.
    monkeypatch.setitem(cli.COMMANDS, "boom", ("tests.cli_boom", "a command with a bug"))
    assert cli.main(["boom"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    assert "please report it" in err.splitlines()[-1]


def test_the_exit_codes_are_documented() -> None:
    assert cli.EXIT_BAD_INPUT == 2 and cli.EXIT_BUG == os.EX_SOFTWARE == 70
    assert "70" in (cli.__doc__ or "")


# ---- found by the hostile-user pass (s23): each was a traceback, a hang, or a wrong exit


def test_more_labels_than_an_operation_may_carry(tmp_path: Path) -> None:
    labels = [a for i in range(65) for a in ("--label", f"op:x{i}")]
    out = run("check", "--config", str(policy(tmp_path)), *labels, "--input", "x")
    one_line_exit_2(out, "at most 64 labels")  # was an internal error (exit 70)


def test_audit_flags_out_of_range_and_a_head_that_is_not_a_hash(tmp_path: Path) -> None:
    assert check(policy(tmp_path)).returncode == 0  # a ledger with events in it
    db = str(tmp_path / "g.db")
    huge = run("audit", "show", "r", "--db", db, "--limit", str(2**70))
    one_line_exit_2(huge, "--limit", str(2**70))  # was an OverflowError traceback
    # A typo in a pinned head is bad input (2), not a broken chain (1).
    one_line_exit_2(run("audit", "verify", "--db", db, "--expect-head", "zzz"), "--expect-head")
    one_line_exit_2(run("audit", "verify", "--db", db, "--expect-head", ""), "--expect-head")
    head = json.loads(run("audit", "verify", "--db", db, "--json").stdout)["head_hash"]
    ok = run("audit", "verify", "--db", db, "--expect-head", head.upper())
    assert ok.returncode == 0, ok.stdout


def test_audit_show_escapes_what_a_terminal_would_obey(tmp_path: Path) -> None:
    from guardpool import Enforcer, Operation

    db = tmp_path / "g.db"
    config = {
        "limits": {"op:ask": {"calls": 0, "on_exceed": "ask"}},
        "store": {"backend": "memory"},
        "audit": {"path": str(db)},
    }
    evil = "\x1b[2J\x1b]0;owned\x07\u202egnp.exe"
    with Enforcer.from_config(config) as enforcer:
        run_ = enforcer.run("r1")
        asked = run_.check(Operation(labels=("op:ask",), input="x"))
        assert asked.action == "ask"
        # The approver's name comes from an HTTP client (POST /v1/approve).
        assert run_.approve(asked, by=evil).allowed
    for args in (("show", "r1"), ("summary", "--run", "r1")):
        out = run("audit", *args, "--db", str(db))
        assert out.returncode == 0, out.stderr
        for raw in (b"\x1b", b"\x07", "\u202e".encode()):
            assert raw not in out.stdout, (args, out.stdout)
    shown = run("audit", "show", "r1", "--db", str(db)).stdout.decode()
    assert "by \\x1b[2J\\x1b]0;owned\\x07\\u202egnp.exe" in shown, shown
    as_json = run("audit", "show", "r1", "--db", str(db), "--json").stdout
    assert any(e["event"].get("reason") == f"by {evil}" for e in json.loads(as_json))


def test_doctor_below_the_memory_a_worker_needs(tmp_path: Path) -> None:
    # Every worker died before it was ready: PoolBroken, an internal error (exit 70).
    one_line_exit_2(run("doctor", "--memory-mb", "1"), "--memory-mb", "48")
    one_line_exit_2(run("doctor", "--memory-mb", str(2**40)), "--memory-mb")


def test_lint_and_test_on_files_nested_too_deeply(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    # lint re-reads a broken policy to check the rest: that read recursed too (no file
    # named, and no JSON document for --json).
    one_line_exit_2(run("lint", "--config", str(deep)), "deep.toml", "nested too deeply")
    doc = json.loads(run("lint", "--config", str(deep), "--json").stdout)
    assert doc["errors"] == 1 and doc["issues"][0]["code"] == "GP001", doc
    cases = run("test", "--config", str(policy(tmp_path)), str(deep))
    one_line_exit_2(cases, "deep.toml", "nested too deeply")


@pytest.mark.parametrize(
    ("command", "flag", "value", "shown"),
    [
        ("fuzz", "--seconds", "nan", "nan"),  # fuzzed nothing, "nothing found", exit 0
        ("fuzz", "--seconds", "1e400", "inf"),  # ran forever
        ("fuzz", "--minimise-seconds", "nan", "nan"),
        ("bench", "--seconds", "nan", "nan"),
        ("bench", "--memory-cap-mb", "-5", "-5"),  # named pool.memory_mb, after work
        ("bench", "--cap-ms", str(10**14), str(10**14)),  # named pool.job_timeout_ms
        ("lint", "--deadline", "nan", "nan"),
        ("lint", "--deadline", "inf", "inf"),
        ("lint", "--deadline", "1e-06", "1e-06"),  # confirmed nothing: dangers passed, exit 0
        ("lint", "--deadline", "0.5", "0.5"),
        ("lint", "--jobs", "0", "0"),
        ("lint", "--jobs", "100000", "100000"),
    ],
)
def test_numeric_flags_out_of_range_name_the_flag(
    tmp_path: Path, command: str, flag: str, value: str, shown: str
) -> None:
    out = run(command, "--config", str(policy(tmp_path)), f"{flag}={value}")
    one_line_exit_2(out, flag, shown)
    if command == "lint":  # the other flag was fine: not named (it once was)
        other = "--jobs" if flag == "--deadline" else "--deadline"
        assert other.encode() not in out.stderr, out.stderr


def _serve_unix(config: Path, sock: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardpool", "serve", "--config", str(config), "--unix", str(sock)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        if _healthy(sock):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("guardpool serve --unix did not start")


def _healthy(sock: Path) -> bool:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=2) as c:
            return c.get("http://sidecar/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    if proc.stderr is not None:
        proc.stderr.close()


def test_serve_never_takes_a_unix_socket_another_server_listens_on(tmp_path: Path) -> None:
    config = policy(tmp_path)
    sock = tmp_path / "g.sock"
    first = _serve_unix(config, sock)
    try:
        # The second server unlinked the first one's socket and bound its own: the
        # first kept running, unreachable, and clients silently reached the second.
        second = run("serve", "--config", str(config), "--unix", str(sock))
        one_line_exit_2(second, "--unix", "another server is listening")
        assert _healthy(sock)
    finally:
        _stop(first)
    # A socket file left by a server that is gone is taken over.
    if not sock.exists():
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(sock))
        srv.close()  # a bound socket file that nobody listens on
    third = _serve_unix(config, sock)
    _stop(third)
    missing_dir = run("serve", "--config", str(config), "--unix", str(tmp_path / "no" / "s.sock"))
    one_line_exit_2(missing_dir, "--unix", str(tmp_path / "no" / "s.sock"))


def test_mcp_proxy_in_front_of_a_command_that_is_not_an_mcp_server(tmp_path: Path) -> None:
    # "Connection closed" / "Method not found" from the MCP client: exit 70 with an
    # ExceptionGroup traceback before.
    config = str(policy(tmp_path))
    gone = run("mcp-proxy", "--config", config, "--", sys.executable, "-c", "pass")
    one_line_exit_2(gone, "did not initialise", "Connection closed")
    echo = run("mcp-proxy", "--config", config, "--", "cat", stdin=b"garbage\n")
    one_line_exit_2(echo, "did not initialise")


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    # `guardpool audit show R | head -1`: "error: Broken pipe" and exit 2 (bad input) before.
    assert check(policy(tmp_path), "--run", "piped").returncode == 0
    db = str(tmp_path / "g.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardpool", "audit", "show", "piped", "--db", db],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == cli.EXIT_SIGPIPE == 141, err
    assert err == b"", err


@pytest.mark.parametrize(
    ("command", "flag", "target", "says"),
    [
        ("fuzz", "--findings", "file", "exists and is not a directory"),
        ("fuzz", "--sarif", "missing/x.sarif", "does not exist"),
        ("fuzz", "--sarif", "dir", "is a directory"),
        ("bench", "--write", "missing/x.toml", "does not exist"),
        ("bench", "--write", "dir", "is a directory"),
    ],
)
def test_output_paths_are_checked_before_the_work(
    tmp_path: Path, command: str, flag: str, target: str, says: str
) -> None:
    # These failed after the whole run (minutes of fuzzing or measuring), or, for a
    # --findings that is a file, said "File exists" at the first finding.
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    config = str(policy(tmp_path))
    out = run(command, "--config", config, "--seconds", "1", flag, str(tmp_path / target))
    one_line_exit_2(out, flag, says)  # one line: no progress, nothing was measured


def test_a_case_with_more_labels_than_an_operation_may_carry(tmp_path: Path) -> None:
    cases = tmp_path / "cases.toml"
    labels = ", ".join(f'"op:x{i}"' for i in range(65))
    cases.write_text(f'[[case]]\nname = "many"\nlabels = [{labels}]\nexpect = "allow"\n')
    out = run("test", "--config", str(policy(tmp_path)), str(cases))
    one_line_exit_2(out, "cases.toml", "case[1]", "at most 64")  # was exit 70


def test_audit_on_a_directory_or_a_device_says_what_it_is(tmp_path: Path) -> None:
    # Both said "no such file".
    one_line_exit_2(run("audit", "verify", "--db", str(tmp_path)), "a directory")
    one_line_exit_2(run("audit", "summary", "--db", os.devnull), "not a regular file")


def _three_gib_of_address_space() -> None:
    # Without the fix the child reads /dev/zero until memory runs out: keep that small.
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


@pytest.mark.parametrize("command", ["check", "hook"])
def test_endless_standard_input_is_refused_after_a_bounded_read(
    tmp_path: Path, command: str
) -> None:
    config = str(policy(tmp_path))
    args = {
        "check": ["check", "--config", config, "--label", "x", "--input", "-"],
        "hook": ["hook", "claude-code", "--config", config, "--state", str(tmp_path / "s")],
    }[command]
    with open("/dev/zero", "rb") as zero:
        out = subprocess.run(
            [sys.executable, "-m", "guardpool", *args],
            cwd=ROOT,
            stdin=zero,
            capture_output=True,
            timeout=120,
            check=False,
            preexec_fn=_three_gib_of_address_space,
        )
    one_line_exit_2(out, "larger than")


def test_a_config_without_end_is_refused_not_read_to_the_end() -> None:
    # /dev/zero as the policy: read until the OOM killer came (exit 137) before.
    out = run("check", "--config", "/dev/zero", "--label", "a", "--input", "x")
    one_line_exit_2(out, "/dev/zero", "larger than 64 MiB")


def test_an_unreachable_postgres_ledger_is_one_line_with_its_cause(tmp_path: Path) -> None:
    # psycopg_pool printed "error connecting in 'guardpool-guardpool': ..." twice per
    # attempt (a tab-indented hint line each) before guardpool's own line, which
    # said only "no connection within 2000 ms": the reason was in the noise.
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/x"
    out = run("audit", "verify", "--url", url)
    err = one_line_exit_2(out, "audit ledger (postgres schema guardpool)", "Connection refused")
    assert "error connecting in" not in err and "Is the server running" not in err
    assert err.startswith("guardpool audit: error: ")
    # A store that is down denies a check (exit 1); the reason follows as one note.
    store = {"backend": "postgres", "url": url, "connect_timeout_ms": 300, "op_timeout_ms": 300}
    denied = check(policy(tmp_path, {"store": store, "limits": {"exe:llm:*": {"calls": 5}}}))
    lines = denied.stderr.decode().strip().splitlines()
    assert denied.returncode == 1, denied.stderr
    assert lines == [lines[0]] and lines[0].startswith("guardpool check: note: "), lines
    assert "Connection refused" in lines[0]


def test_a_postgres_ledger_that_refuses_the_login_says_why(postgres_server: PostgresServer) -> None:
    # A real server, a role that does not exist: the cause is the server's answer.
    url = f"postgresql://nobody@127.0.0.1:{postgres_server.port}/guardpool"
    out = run("audit", "show", "r1", "--url", url)
    one_line_exit_2(out, 'failed: FATAL:  password authentication failed for user "nobody"')
