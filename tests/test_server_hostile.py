"""Hostile HTTP clients against a real ``guardpool serve``: a 4xx naming the field, never a 5xx.

Every case here was a 500, a bypass or a hang before: a label with a trailing
newline matched no pattern (no guard, no budget), JSON nested 1,000 deep and
``1e999999`` were 500s with plain-text bodies, a 2**63 token count wrapped a
counter, an unknown decision id settled with ``allowed: true``, and a client
that stopped halfway through its headers held its connection forever.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .test_server import TOKEN, Server, client


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(
        tmp_path_factory.mktemp("hostile"),
        "--token",
        TOKEN,
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
    )
    s.wait_ready()
    yield s
    assert s.stop() == 0


def post(s: Server, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with client(s) as c:
        return c.post(path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "status", "field", "says"),
    [
        ({"labels": ["op:net:w\n"]}, 422, "$.labels[0]", "U+000A"),
        ({"labels": ["op:net", "op::x"]}, 422, "$.labels[1]", "empty segment"),
        ({"labels": ["op:\u200bnet"]}, 422, "$.labels[0]", "ZERO WIDTH SPACE"),
        ({"labels": ["x"] * 65}, 422, "$.labels", "length <= 64"),
        ({"labels": []}, 422, "$.labels", "at least one"),
        (b'{"labels":["x"],"input":' + b"[" * 1000 + b"]" * 1000 + b"}", 400, "", "too deeply"),
        ({"labels": ["x"], "estimate": {"tokens": 2**63}}, 422, "$.estimate.tokens", "<="),
        ({"labels": ["x"], "estimate": {"tokens": 10**15 + 1}}, 422, "$.estimate.tokens", "<="),
        (
            {"labels": ["x"], "estimate": {"input_tokens": 10**15, "output_tokens": 1}},
            422,
            "$.estimate.input_tokens",
            "10^15",
        ),
        (b'{"labels":["x"],"estimate":{"cost":1e999999}}', 422, "$.estimate.cost", "largest"),
        ({"labels": ["x"], "estimate": {"cost": "1e999999"}}, 422, "$.estimate.cost", "largest"),
        ({"labels": ["x"], "estimate": {"cost": "0." + "1" * 120}}, 422, "$.estimate.cost", "96"),
        ({"labels": ["x"], "estimate": {"wall_ms": -1}}, 422, "$.estimate.wall_ms", ">= 0"),
        ({"labels": ["x"], "estimate": {"extra": {"Rows": 1}}}, 422, "$.estimate.extra", "regex"),
        ({"labels": ["x"], "run_id": "r\n1"}, 422, "$.run_id", "regex"),
        ({"labels": ["x"], "principal": "p" * 300}, 422, "$.principal", "length <= 256"),
        (b'{"labels":["x"],"input":' + b"9" * 5000 + b"}", 422, "$.input", "out of range"),
    ],
)
def test_bad_check_bodies_are_4xx_naming_the_field(
    server: Server, body: Any, status: int, field: str, says: str
) -> None:
    r = post(server, "/v1/check", body)
    assert r.status_code == status, r.text
    answer = r.json()
    assert answer.get("field", "") == field, answer
    assert says in answer["detail"], answer


def test_a_long_digit_string_is_refused_without_converting_it(server: Server) -> None:
    # 100 KB of digits (the body cap of this server is 128 KB): decoded in a
    # thread, refused on its exponent before any Decimal -> int conversion.
    digits = b"9" * 100_000
    for cost in (b'"' + digits + b'"', digits, b'"0.' + digits + b'"'):
        r = post(server, "/v1/check", b'{"labels":["x"],"estimate":{"cost":' + cost + b"}}")
        assert r.status_code == 422, r.text[:200]
        assert r.json()["field"] == "$.estimate.cost"
    with client(server) as c:
        assert c.get("/healthz").status_code == 200


def test_unknown_and_denied_decisions_cannot_be_settled_or_released(server: Server) -> None:
    for path in ("/v1/settle", "/v1/release"):
        r = post(server, path, {"run_id": "h1", "decision_id": "made-up"})
        assert r.status_code == 404 and r.json()["field"] == "$.decision_id", r.text
    denied = post(
        server, "/v1/check", {"labels": ["x"], "run_id": "h1", "input": "AKIAABCDEFGHIJKLMNOP"}
    ).json()
    assert denied["allowed"] is False
    r = post(server, "/v1/settle", {"run_id": "h1", "decision_id": denied["id"]})
    assert r.status_code == 409, r.text
    granted = post(server, "/v1/check", {"labels": ["exe:llm:x"], "run_id": "h1"}).json()
    assert granted["allowed"] is True
    # a known id, but claimed for another run, is unknown to that run
    other = post(server, "/v1/settle", {"run_id": "h2", "decision_id": granted["id"]})
    assert other.status_code == 404
    ok = post(
        server,
        "/v1/settle",
        {"run_id": "h1", "decision_id": granted["id"], "usage": {"tokens": 5}},
    )
    assert ok.status_code == 200 and ok.json()["allowed"] is True
    # settle labels obey the grammar too (they pick the after-guards)
    bad = post(
        server,
        "/v1/settle",
        {"run_id": "h1", "decision_id": granted["id"], "labels": ["op:net:w\n"]},
    )
    assert bad.status_code == 422 and bad.json()["field"] == "$.labels[0]"


def test_a_huge_settle_is_422_and_the_budget_still_holds(server: Server) -> None:
    tiny = post(server, "/v1/check", {"labels": ["op:tiny"], "run_id": "h3"}).json()
    assert tiny["allowed"] is True
    r = post(
        server,
        "/v1/settle",
        {"run_id": "h3", "decision_id": tiny["id"], "usage": {"tokens": 2**63}},
    )
    assert r.status_code == 422 and r.json()["field"] == "$.usage.tokens"
    # calls = 1 for op:tiny per run: the reservation still stands, nothing wrapped
    again = post(server, "/v1/check", {"labels": ["op:tiny"], "run_id": "h3"}).json()
    assert again["allowed"] is False


def test_run_report_refuses_control_characters(server: Server) -> None:
    with client(server) as c:
        r = c.get("/v1/runs/a%0Ab")
    assert r.status_code == 422 and r.json()["field"] == "run_id"


def _raw(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(4096):
        out += chunk
    return out


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connected, never said anything
        b"POST /v1/check HTTP/1.1\r\nHost: x\r\n",  # headers never finished
        b"POST /v1/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b'\r\nContent-Length: 100\r\n\r\n{"lab',  # body never finished
    ],
)
def test_stalled_connections_get_408_and_are_closed(server: Server, sent: bytes) -> None:
    with _raw(server) as sock:
        sock.sendall(sent)
        answer = _read_all(sock)  # returns once the server closes (socket timeout: 30 s)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert b'"error":"request timeout"' in answer


def test_a_slow_but_steady_client_is_served(server: Server) -> None:
    body = json.dumps({"labels": ["x"], "input": "hi"}).encode()
    head = (
        b"POST /v1/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    with _raw(server) as sock:
        sock.sendall(head + body)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]


def test_metrics_counts_are_counters(server: Server) -> None:
    post(server, "/v1/check", {"labels": ["x"], "run_id": "m"})
    with client(server) as c:
        text = c.get("/metrics").text
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    assert types["guardpool_checks_total"] == "counter"
    assert types["guardpool_pool_killed_total"] == "counter"
    assert types["guardpool_pool_crashed_total"] == "counter"
    assert types["guardpool_pool_workers"] == "gauge"
    assert not [name for name in types if name.endswith("_created")]


# ----------------------------------------------------------------- property

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_label = st.one_of(
    st.sampled_from(["x", "exe:llm:x", "op:tiny", "op:net:w", "*", "op:net:w\n", "", ":"]),
    st.text(max_size=12),
)
_usage = st.fixed_dictionaries(
    {},
    optional={
        "tokens": _json | st.integers(-(2**70), 2**70),
        "input_tokens": st.integers(-(2**70), 2**70),
        "output_tokens": st.integers(-(2**70), 2**70),
        "cost": _json | st.sampled_from(["1e999999", "$0.03", "0.0001", "NaN", "-1", "9" * 80]),
        "wall_ms": _json,
        "extra": st.dictionaries(st.text(max_size=6), _json | st.integers(-5, 2**64)),
    },
)
_check = st.fixed_dictionaries(
    {},
    optional={
        "labels": st.lists(_label, max_size=3) | _json,
        "input": _json,
        "estimate": _usage | _json,
        "run_id": st.text(max_size=10) | _json,
        "principal": st.text(max_size=10) | _json,
        "surprise": _json,
    },
)
_settle = st.fixed_dictionaries(
    {},
    optional={
        "run_id": st.sampled_from(["h1", "r"]) | _json,
        "decision_id": st.text(max_size=12) | _json,
        "usage": _usage | _json,
        "output": _json,
        "labels": st.lists(_label, max_size=2) | _json,
        "principal": _json,
    },
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(["/v1/check", "/v1/settle", "/v1/release"]),
    body=st.one_of(_check, _settle, _json, st.binary(max_size=64)),
)
def test_random_bodies_never_get_a_5xx(server: Server, route: str, body: Any) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = post(server, route, content)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    answer = r.json()
    if r.status_code >= 400:
        assert answer["error"] and isinstance(answer["detail"], str)


@pytest.mark.parametrize(
    "body",
    [
        # Each was allowed: msgspec keeps the last value, so the guard judged "hi",
        # while a reader that keeps the first (some parsers, proxies) acts on the key.
        b'{"labels":["x"],"input":"AKIAABCDEFGHIJKLMNOP","input":"hi"}',
        b'{"labels":["x"],"input":"AKIAABCDEFGHIJKLMNOP","\\u0069nput":"hi"}',
        b'{"labels":["x"],"input":{"text":"AKIAABCDEFGHIJKLMNOP","text":"hi"}}',
        b'{"labels":["x"],"input":[{"a":1},{"b":{"c":"AKIAABCDEFGHIJKLMNOP","c":"hi"}}]}',
        b'{"labels":["op:tiny"],"labels":["x"],"run_id":"dup1"}',
        b'{"labels":["x"],"input":"\\ud800 AKIAABCDEFGHIJKLMNOP","input":"\\ud800"}',
    ],
)
def test_a_key_repeated_in_one_object_is_refused(server: Server, body: bytes) -> None:
    r = post(server, "/v1/check", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "duplicate key" and "appears twice" in r.json()["detail"]


def test_repeated_keys_in_settle_and_approve_and_the_same_key_in_two_objects(
    server: Server,
) -> None:
    # The same key in different objects is ordinary JSON.
    fine = post(server, "/v1/check", b'{"labels":["x"],"input":[{"a":1},{"a":2}],"run_id":"d2"}')
    assert fine.status_code == 200 and fine.json()["allowed"] is True, fine.text
    granted = post(server, "/v1/check", {"labels": ["exe:llm:x"], "run_id": "d2"}).json()
    dup = (
        b'{"run_id":"d2","decision_id":"' + granted["id"].encode() + b'",'
        b'"usage":{"tokens":1000000,"tokens":0}}'
    )
    assert post(server, "/v1/settle", dup).status_code == 400
    answer = b'{"run_id":"d2","decision_id":"x","by":"alice","by":"mallory"}'
    assert post(server, "/v1/approve", answer).status_code == 400


def test_a_run_id_that_is_not_utf8_is_refused(server: Server) -> None:
    # The path was decoded with errors replaced: %FF answered 200 with the report of
    # run "\ufffd", another run.
    with client(server) as c:
        for path in ("/v1/runs/%FF", "/v1/runs/a%ED%A0%80b"):
            r = c.get(path)
            assert r.status_code == 422 and r.json()["field"] == "run_id", (path, r.text)
        assert c.get("/v1/runs/caf%C3%A9").json()["run_id"] == "caf\u00e9"
        r = c.get("/v1/runs/r1?principal=%FF")
        assert r.status_code == 422 and r.json()["field"] == "principal", r.text
        assert c.get("/v1/runs/r1?principal=b%C3%B8b").json()["principal"] == "b\u00f8b"


@pytest.mark.parametrize(
    ("field", "value"),
    [("by", "\x1b[2Jmallory"), ("by", "b" * 300), ("decision_id", "d\n"), ("run_id", "r" * 300)],
)
def test_an_answer_is_bounded_and_printable(server: Server, field: str, value: str) -> None:
    # `by` reached the ledger whole (megabytes) and with control characters, which
    # `guardpool audit show` printed to the terminal.
    body = {"run_id": "a1", "decision_id": "d1", "by": "alice", field: value}
    for route in ("/v1/approve", "/v1/reject"):
        r = post(server, route, body)
        assert r.status_code == 422 and r.json()["field"] == f"$.{field}", r.text


def test_a_sidecar_without_a_token_refuses_web_pages(tmp_path: Path) -> None:
    # Any page in the user's browser could POST (text/plain: no CORS preflight) to a
    # --no-auth sidecar on loopback: check, settle, release, approve.
    s = Server(tmp_path, "--no-auth")
    s.wait_ready()
    try:
        page = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
        with httpx.Client(base_url=s.url, timeout=30) as c:
            body = json.dumps({"labels": ["op:tiny"], "run_id": "web"})
            r = c.post("/v1/check", content=body, headers=page)
            assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
            for path in ("/v1/settle", "/v1/release", "/v1/approve"):
                assert c.post(path, content=b"{}", headers=page).status_code == 403
            assert c.get("/v1/runs/web", headers=page).status_code == 403
            # the budget was not touched: op:tiny allows one call per run
            assert c.post("/v1/check", content=body).json()["allowed"] is True
            assert c.get("/healthz", headers=page).status_code == 200
    finally:
        assert s.stop() == 0


def test_a_sidecar_with_a_token_still_serves_requests_with_an_origin(server: Server) -> None:
    with client(server) as c:
        r = c.post("/v1/check", json={"labels": ["x"]}, headers={"Origin": "app://host"})
    assert r.status_code == 200 and r.json()["allowed"] is True, r.text
