"""A real ``guardpool serve`` process on a free port, driven with a real HTTP client."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from guardpool.audit.ledger import Ledger

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t0ken-for-tests"


def write_policy(tmp_path: Path) -> Path:
    db = tmp_path / "g.db"
    policy = tmp_path / "p.toml"
    policy.write_text(
        "[pool]\nmax_input_bytes = 65536\n"
        '[[guard]]\nname = "keys"\nops = ["*"]\ndeny_regex = [\'AKIA[0-9A-Z]{16}\']\n'
        'reason = "credential in outbound data"\n'
        '[[guard]]\nname = "slow"\nops = ["op:slow"]\ncall = "tests.server_guards:slow_allow"\n'
        "timeout_ms = 5000\n"
        '[[guard]]\nname = "out"\nphase = "after"\nops = ["*"]\n'
        'call = "tests.enforcer_guards:deny_secrets"\n'
        '[limits."exe:llm:*"]\ncalls = 1000\nscope = "global"\n'
        '[limits."op:tiny"]\ncalls = 1\n'
        f'[store]\npath = "{db}"\n[audit]\npath = "{db}"\n'
    )
    return policy


class Server:
    def __init__(self, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.policy = write_policy(tmp_path)
        self.db = tmp_path / "g.db"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "guardpool",
                "serve",
                "--config",
                str(self.policy),
                "--port",
                str(self.port),
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode() if self.proc.stderr else "")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path, "--token", TOKEN)
    s.wait_ready()
    yield s
    s.stop()


def client(s: Server, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=s.url, headers=headers, timeout=30)


def test_check_settle_release_and_run_report(server: Server) -> None:
    with client(server) as c:
        d = c.post(
            "/v1/check",
            json={
                "labels": ["exe:llm:gpt-4o"],
                "input": "hello",
                "run_id": "r1",
                "estimate": {"tokens": 10},
            },
        ).json()
        assert d["allowed"] is True and d["run_id"] == "r1"
        after = c.post(
            "/v1/settle",
            json={
                "run_id": "r1",
                "decision_id": d["id"],
                "usage": {"tokens": 12, "cost": "0.002"},
                "output": "the secret is out",
                "labels": ["exe:llm:gpt-4o"],
            },
        ).json()
        assert after["allowed"] is False and after["reasons"] == ["mentions a secret"]
        denied = c.post(
            "/v1/check",
            json={"labels": ["exe:llm:x"], "run_id": "r1", "input": "AKIAABCDEFGHIJKLMNOP"},
        ).json()
        assert denied["allowed"] is False and denied["reasons"] == ["credential in outbound data"]
        tiny = c.post("/v1/check", json={"labels": ["op:tiny"], "run_id": "r1"}).json()
        assert c.post("/v1/release", json={"run_id": "r1", "decision_id": tiny["id"]}).json() == {
            "released": True
        }
        report = c.get("/v1/runs/r1").json()
        calls = [lim for lim in report["limits"] if lim["pattern"] == "exe:llm:*"]
        assert calls[0]["used"] == 1
        assert report["audit"]["decisions_denied"] >= 1
        metrics = c.get("/metrics").text
        assert 'guardpool_checks_total{action="deny"}' in metrics
        assert 'guardpool_guard_outcomes_total{guard="keys",outcome="deny"}' in metrics


@pytest.mark.parametrize(
    ("content", "headers", "status", "error"),
    [
        (b'{"labels": [', {}, 400, "malformed JSON"),
        (b'{"labels": "x"}', {}, 422, "invalid body"),
        (b'{"input": "x"}', {}, 422, "invalid body"),
        (b'{"labels": ["bad label"]}', {}, 422, "invalid body"),
        (b'{"labels": ["x"], "surprise": 1}', {}, 422, "invalid body"),
        (b'{"labels": ["x"], "estimate": {"cost": "lots"}}', {}, 422, "invalid body"),
        (b'{"labels": ["x"], "estimate": {"tokens": -5}}', {}, 422, "invalid body"),
        (b'{"labels": ["x"], "input": "caf\xe9"}', {}, 400, "body is not UTF-8"),
        (b'{"labels": ["x"], "input": "' + b"a" * 200_000 + b'"}', {}, 413, "body too large"),
    ],
)
def test_bad_bodies_get_a_clear_status_and_message(
    server: Server, content: bytes, headers: dict[str, str], status: int, error: str
) -> None:
    with client(server) as c:
        r = c.post("/v1/check", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error


def test_auth_is_required_and_compared_exactly(server: Server) -> None:
    with client(server, token=None) as c:
        assert c.post("/v1/check", json={"labels": ["x"]}).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/healthz").status_code == 200  # liveness needs no token
    with client(server, token=TOKEN + "x") as c:
        assert c.post("/v1/check", json={"labels": ["x"]}).status_code == 401
    with client(server) as c:
        assert c.get("/nope").status_code == 404
        assert c.get("/v1/check").status_code == 405


def test_2000_checks_from_8_clients_grant_the_budget_exactly(server: Server) -> None:
    allowed = 0
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        nonlocal allowed
        with client(server) as c:
            for i in range(250):
                r = c.post(
                    "/v1/check",
                    json={
                        "labels": ["exe:llm:x"],
                        "run_id": f"r{i}",
                        "principal": "team",
                        "input": "hi",
                    },
                )
                if r.status_code != 200:
                    with lock:
                        errors.append(r.text)
                elif r.json()["allowed"]:
                    with lock:
                        allowed += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert allowed == 1000  # calls = 1000, scope = "global"


def test_sigterm_finishes_in_flight_checks_then_exits_cleanly(server: Server) -> None:
    result: dict[str, object] = {}

    def slow_check() -> None:
        with client(server) as c:
            result["r"] = c.post("/v1/check", json={"labels": ["op:slow"], "run_id": "s"}).json()

    t = threading.Thread(target=slow_check)
    t.start()
    time.sleep(0.3)  # the slow guard (0.8 s) is running
    server.proc.send_signal(signal.SIGTERM)
    t.join(timeout=30)
    assert server.proc.wait(timeout=30) == 0
    assert isinstance(result.get("r"), dict) and result["r"]["allowed"] is True  # type: ignore[index]
    ledger = Ledger(server.db)
    try:
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_unix_socket_is_private(tmp_path: Path) -> None:
    path = tmp_path / "gp.sock"
    s = Server(tmp_path, "--unix", str(path))
    try:
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://gp", timeout=30) as c:
            for _ in range(100):
                try:
                    r = c.post("/v1/check", json={"labels": ["x"], "input": "hi"})
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            assert r.status_code == 200 and r.json()["allowed"] is True
    finally:
        assert s.stop() == 0


def test_no_token_without_explicit_opt_out_is_refused(tmp_path: Path) -> None:
    s = Server(tmp_path, env={"GUARDPOOL_TOKEN": ""})
    assert s.proc.wait(timeout=30) == 2
    assert s.proc.stderr is not None and b"--no-auth" in s.proc.stderr.read()


def test_no_auth_must_be_asked_for(tmp_path: Path) -> None:
    s = Server(tmp_path, "--no-auth")
    try:
        s.wait_ready()
        with client(s, token=None) as c:
            assert c.post("/v1/check", json={"labels": ["x"]}).status_code == 200
    finally:
        s.stop()
