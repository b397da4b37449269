"""A real ``guardpool serve`` and its Host check (DNS rebinding) and token sources.

A web page on ``evil.example`` whose DNS answer turned into 127.0.0.1 reads a
``--no-auth`` sidecar's ``GET /v1/runs/R`` and ``/metrics`` as same-origin
requests: no Origin header, only its own name in Host. Before the Host check
those answered 200. ``--token T`` shows in ``ps``: ``--token-file`` reads it
from a file instead, and a file that cannot hold a token is exit 2 naming it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .test_server import ROOT, TOKEN, Server, write_policy

EVIL = "evil.example"


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("hosts"), "--no-auth")
    s.wait_ready()
    yield s
    assert s.stop() == 0


def get(s: Server, path: str, host: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{s.url}{path}", headers={"Host": host, **headers}, timeout=30)


def test_a_rebound_page_cannot_read_a_sidecar_without_a_token(open_server: Server) -> None:
    s = open_server
    for path in ("/v1/runs/r1", "/metrics"):
        r = get(s, path, f"{EVIL}:{s.port}")
        assert r.status_code == 421, (path, r.text)
        answer = r.json()
        assert answer["error"] == "misdirected request"
        assert f"Host '{EVIL}:{s.port}'" in answer["detail"], answer
        assert "--allow-host" in answer["detail"]
    # a write is refused the same way, before the budget is touched (op:tiny: one call)
    body = json.dumps({"labels": ["op:tiny"], "run_id": "rebound"})
    page = {"Host": f"{EVIL}:{s.port}", "Content-Type": "text/plain"}
    assert httpx.post(f"{s.url}/v1/check", content=body, headers=page).status_code == 421
    own = httpx.post(f"{s.url}/v1/check", content=body, timeout=30)
    assert own.status_code == 200 and own.json()["allowed"] is True, own.text


@pytest.mark.parametrize(
    "host",
    ["localhost:{port}", "LOCALHOST:{port}", "127.0.0.1:{port}", "[::1]:{port}"],
)
def test_names_of_the_sidecar_are_answered(open_server: Server, host: str) -> None:
    r = get(open_server, "/v1/runs/r1", host.format(port=open_server.port))
    assert r.status_code == 200 and r.json()["run_id"] == "r1", r.text


@pytest.mark.parametrize(
    "host",
    [
        "localhost:1",  # another port: came through a forward the operator did not name
        "127.0.0.1",  # no port means 80
        "10.1.2.3:{port}",  # not an address this sidecar listens on
        "localhost.:{port}",
        "evil.example",
        "gp.internal.evil.example:{port}",
        "[::1:{port}",
        "localhost:99999",
        "localhost:x",
        "",
    ],
)
def test_other_hosts_are_refused(open_server: Server, host: str) -> None:
    r = get(open_server, "/v1/runs/r1", host.format(port=open_server.port))
    assert r.status_code in (400, 421), r.text  # 400: uvicorn refused an empty Host itself
    if r.status_code == 421:
        assert "Host" in r.json()["detail"]


def test_names_the_operator_allows_are_answered(tmp_path: Path) -> None:
    s = Server(tmp_path, "--no-auth", "--allow-host", "GP.internal", "--allow-host", "gp2:8443")
    s.wait_ready()
    try:
        for host, status in [
            ("gp.internal:9", 200),  # NAME: any port (a proxy may rewrite it)
            ("gp.internal", 200),
            ("gp2:8443", 200),  # NAME:PORT: that port only
            ("gp2:80", 421),
            ("gp2", 421),
            (f"localhost:{s.port}", 200),
            (f"{EVIL}:{s.port}", 421),
        ]:
            assert get(s, "/v1/runs/r1", host).status_code == status, host
    finally:
        assert s.stop() == 0


def test_two_host_headers_are_refused(open_server: Server) -> None:
    s = open_server
    request = (
        f"GET /v1/runs/r1 HTTP/1.1\r\nHost: localhost:{s.port}\r\nHost: {EVIL}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = answer.split(b" ", 2)[1]
    assert status in (b"400", b"421"), answer[:300]
    assert b'"run_id"' not in answer


def test_health_and_the_claude_code_route_keep_their_contracts(open_server: Server) -> None:
    s = open_server
    assert get(s, "/healthz", f"{EVIL}:{s.port}").status_code == 200  # nothing to read
    # The hook route answers 200 always (Claude Code ignores other statuses): a deny.
    pre = {
        "hook_event_name": "PreToolUse",
        "session_id": "s1",
        "tool_use_id": "t1",
        "tool_name": "Bash",
        "tool_input": {"command": "ls"},
    }
    r = httpx.post(
        f"{s.url}/v1/hooks/claude-code",
        content=json.dumps(pre),
        headers={"Host": f"{EVIL}:{s.port}"},
        timeout=30,
    )
    out = r.json()["hookSpecificOutput"]
    assert r.status_code == 200 and out["permissionDecision"] == "deny", r.text
    assert "misdirected request" in out["permissionDecisionReason"]


def test_with_a_token_the_host_check_is_off_unless_asked(tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (tmp_path / "a").mkdir()
    plain = Server(tmp_path / "a", "--token", TOKEN)
    plain.wait_ready()
    try:
        # behind a proxy or a service name: the token is the gate, a rebound page has none
        assert get(plain, "/v1/runs/r1", f"proxy.example:{plain.port}", **auth).status_code == 200
        assert get(plain, "/v1/runs/r1", f"{EVIL}:{plain.port}").status_code == 401
    finally:
        assert plain.stop() == 0
    (tmp_path / "b").mkdir()
    strict = Server(tmp_path / "b", "--token", TOKEN, "--allow-host", "gp.internal:443")
    strict.wait_ready()
    try:
        assert get(strict, "/v1/runs/r1", "gp.internal:443", **auth).status_code == 200
        assert get(strict, "/v1/runs/r1", "gp.internal:80", **auth).status_code == 421
        assert get(strict, "/v1/runs/r1", f"localhost:{strict.port}", **auth).status_code == 200
        assert get(strict, "/v1/runs/r1", f"{EVIL}:{strict.port}", **auth).status_code == 421
    finally:
        assert strict.stop() == 0


def test_a_unix_socket_sidecar_has_no_host_check(tmp_path: Path) -> None:
    sock = tmp_path / "gp.sock"
    s = Server(tmp_path, "--unix", str(sock))
    try:
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://anything", timeout=30) as c:
            deadline = time.monotonic() + 30
            while True:
                try:
                    r = c.get("/v1/runs/r1", headers={"Host": EVIL})
                    break
                except httpx.TransportError:
                    assert s.proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.05)
            assert r.status_code == 200, r.text
    finally:
        assert s.stop() == 0


def run_serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    policy = str(write_policy(tmp_path))
    return subprocess.run(
        [sys.executable, "-m", "guardpool", "serve", "--config", policy, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--no-auth", "--allow-host", "bad name"], "--allow-host 'bad name'"),
        (["--no-auth", "--allow-host", "a/b"], "letters, digits"),
        (["--no-auth", "--allow-host", "gp:0"], "is not a port"),
        (["--unix", "SOCK", "--allow-host", "gp"], "TCP only"),
    ],
)
def test_bad_allow_host_values_are_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    args = [str(tmp_path / "s.sock") if a == "SOCK" else a for a in args]
    out = run_serve(tmp_path, *args)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


# -- where the token comes from


def test_a_token_file_is_read_and_argv_tokens_are_warned_about(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    secret.chmod(0o600)
    s = Server(tmp_path, "--token-file", str(secret))
    s.wait_ready()
    try:
        ok = httpx.get(f"{s.url}/v1/runs/r1", headers={"Authorization": "Bearer from-a-file"})
        assert ok.status_code == 200, ok.text
        assert httpx.get(f"{s.url}/v1/runs/r1").status_code == 401
        # the file's token is not on the command line
        assert b"from-a-file" not in Path(f"/proc/{s.proc.pid}/cmdline").read_bytes()
    finally:
        assert s.stop() == 0
    assert s.proc.stderr is not None
    quiet = s.proc.stderr.read().decode()
    assert "visible to other local users" not in quiet and "warning" not in quiet, quiet
    secret.chmod(0o644)
    (tmp_path / "open").mkdir()
    s = Server(tmp_path / "open", "--token-file", str(secret))
    s.wait_ready()
    assert s.stop() == 0
    assert s.proc.stderr is not None
    loose = s.proc.stderr.read().decode()
    assert f"--token-file {secret} is readable by other users (mode 0644)" in loose, loose
    (tmp_path / "argv").mkdir()
    s = Server(tmp_path / "argv", "--token", TOKEN)
    s.wait_ready()
    assert s.stop() == 0
    assert s.proc.stderr is not None
    warning = s.proc.stderr.read().decode()
    assert "--token on the command line is visible to other local users" in warning, warning


def bad_token_files(tmp_path: Path) -> list[tuple[str, str]]:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "newline").write_bytes(b"\n")
    (tmp_path / "two-lines").write_bytes(b"first\nsecond\n")
    (tmp_path / "big").write_bytes(b"x" * 5000)
    (tmp_path / "latin1").write_bytes(b"caf\xe9\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    return [
        ("empty", "is empty"),
        ("newline", "is empty"),
        ("two-lines", "on line 1"),
        ("big", "larger than 4096 bytes"),
        ("latin1", "not UTF-8"),
        ("fifo", "not a regular file"),
        ("dir", "not a regular file"),
        ("missing", "No such file"),
    ]


def test_a_bad_token_file_is_exit_2_naming_it(tmp_path: Path) -> None:
    for name, says in bad_token_files(tmp_path):
        path = str(tmp_path / name)
        out = run_serve(tmp_path, "--token-file", path)
        assert out.returncode == 2, (name, out.stderr)
        assert f"--token-file {path}: " in out.stderr and says in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr
    both = run_serve(tmp_path, "--token", "a", "--token-file", str(tmp_path / "x"))
    assert both.returncode == 2 and "mutually exclusive" in both.stderr


def test_the_help_says_argv_tokens_are_visible(tmp_path: Path) -> None:
    for command in (["serve"], ["hook", "claude-code"]):
        out = subprocess.run(
            [sys.executable, "-m", "guardpool", *command, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        text = " ".join(out.stdout.split())
        assert "--token-file PATH" in text and "visible to other local users in ps" in text
    serve_help = subprocess.run(
        [sys.executable, "-m", "guardpool", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--allow-host NAME[:PORT]" in serve_help and "rebinding" in serve_help


def hook(*args: str) -> subprocess.CompletedProcess[str]:
    pre = {
        "hook_event_name": "PreToolUse",
        "session_id": "s1",
        "tool_use_id": "t1",
        "tool_name": "Bash",
        "tool_input": {"command": "ls"},
    }
    return subprocess.run(
        [sys.executable, "-m", "guardpool", "hook", "claude-code", *args],
        cwd=ROOT,
        input=json.dumps(pre),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_hook_reads_its_token_from_a_file(tmp_path: Path) -> None:
    s = Server(tmp_path, "--token", TOKEN)
    s.wait_ready()
    try:
        good, wrong = tmp_path / "good", tmp_path / "wrong"
        good.write_text(TOKEN + "\n")
        wrong.write_text("not-the-token\n")
        state = str(tmp_path / "state")
        allowed = hook("--server", s.url, "--token-file", str(good), "--state", state)
        assert allowed.returncode == 0, allowed.stderr
        assert "deny" not in allowed.stdout, allowed.stdout
        denied = hook("--server", s.url, "--token-file", str(wrong), "--state", state)
        assert denied.returncode == 0 and "deny" in denied.stdout, denied.stdout
        assert "401" in denied.stdout
    finally:
        assert s.stop() == 0
    (tmp_path / "bad").mkdir()
    for name, says in bad_token_files(tmp_path / "bad"):
        path = str(tmp_path / "bad" / name)
        out = hook("--server", s.url, "--token-file", path, "--state", state)
        assert out.returncode == 2 and f"--token-file {path}: " in out.stderr, (name, out.stderr)
        assert says in out.stderr and "Traceback" not in out.stderr, out.stderr
