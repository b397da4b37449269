"""The input contract (policy/inputs.py): one size, one set of bytes, one digest.

End to end with real worker processes, a real SQLite ledger and a real
``guardpool serve``: a lone surrogate reaches a callable guard, an input of
exactly ``max_input_bytes`` passes the enforcer, the banks and the pool, one
byte more is a deny even for a fail-open guard, and the ledger's digest is the
digest of the bytes the guard saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardpool import Enforcer, Operation, Usage
from guardpool.audit.ledger import Ledger
from guardpool.policy import inputs

from .sidecar import TOKEN, Sidecar

G = "tests.input_guards"
CAP = 1000


def policy(tmp_path: Path, *guards: dict[str, Any]) -> dict[str, Any]:
    db = str(tmp_path / "g.db")
    return {
        "pool": {"workers": 1, "job_timeout_ms": 5000, "max_input_bytes": CAP},
        "store": {"backend": "sqlite", "path": db},
        "audit": {"path": db},
        "guard": list(guards),
    }


def fail_open(name: str, call: str, ops: list[str] | None = None) -> dict[str, Any]:
    return {"name": name, "ops": ops or ["*"], "call": f"{G}:{call}", "on_error": "allow"}


@pytest.fixture
def enforcer(tmp_path: Path) -> Iterator[Enforcer]:
    cfg = policy(
        tmp_path,
        fail_open("surrogates", "deny_lone_surrogate", ["op:sur"]),
        fail_open("digest", "report_digest", ["op:digest"]),
        fail_open("allow", "allow", ["op:cap"]),
        fail_open("words", "words_only", ["op:words"]),
        fail_open("quote", "quote", ["op:quote"]),
        fail_open("shout", "shout", ["op:shout"]),
        {"name": "bank", "ops": ["op:cap"], "deny_regex": ["never-matches-[0-9]{40}"]},
        {"name": "after", "ops": ["op:out"], "phase": "after", "call": f"{G}:allow",
         "on_error": "allow"},
    )
    with Enforcer.from_config(cfg) as e:
        yield e


def check_event(tmp_path: Path, decision_id: str) -> Any:
    with Ledger(tmp_path / "g.db", create=False) as ledger:
        [event] = [
            s.event for s in ledger.events(kinds=["check"]) if s.event.decision_id == decision_id
        ]
    return event


# -- the contract's functions -----------------------------------------------------------------


def test_the_bytes_of_each_kind_of_input() -> None:
    assert inputs.guard_bytes("é\ud800") == b"\xc3\xa9\xed\xa0\x80"  # surrogatepass
    assert inputs.guard_bytes(b"\xff") == b"\xff"
    assert inputs.guard_bytes(bytearray(b"ab")) == b"ab"
    assert inputs.guard_bytes({"b": [1.5], "a": None}) == b'{"a":null,"b":[1.5]}'
    # JSON text holds a lone surrogate only as its escape.
    assert inputs.guard_bytes({"k\ud800": "v\udfff"}) == b'{"k\\ud800":"v\\udfff"}'
    assert inputs.guard_bytes({2: "x", 10: "y"}) == b'{"10":"y","2":"x"}'  # keys as JSON has them
    for value in ("héllo\ud800", b"\x00\xff", {"z": 1, "a": ["\ud800"]}):
        data = inputs.guard_bytes(value)
        assert inputs.input_size(value) == len(data)
        assert inputs.input_digest(value) == hashlib.sha256(data).hexdigest()
        measured = inputs.measure(value)
        assert (measured.size, measured.digest) == (len(data), inputs.input_digest(value))


@pytest.mark.parametrize(
    ("value", "needle"),
    [(object(), "object"), ({(1, 2): "x"}, "dict"), ([1, object()], "list"), (10**5000, "int")],
    ids=["object", "tuple-key", "nested-object", "huge-int"],
)
def test_an_input_outside_the_contract_is_refused_with_its_type(value: Any, needle: str) -> None:
    with pytest.raises(inputs.InputError, match=f"not text, bytes or JSON-like data \\({needle}"):
        inputs.measure(value)


def test_too_large_names_the_size_and_the_cap() -> None:
    assert inputs.too_large(CAP, CAP) is None
    assert inputs.too_large(CAP + 1, CAP) == (
        f"input too large: {CAP + 1} bytes > max_input_bytes {CAP}; no guard ran"
    )


JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**80), 2**80) | st.floats()
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_LIKE)
def test_the_slow_path_writes_what_msgspec_writes(value: Any) -> None:
    # Lone surrogates take a hand-written path; everything else in it is msgspec's.
    assert inputs.canonical_json(value) == msgspec.json.encode(value, order="sorted")


@settings(max_examples=300, deadline=None)
@given(JSON_LIKE | st.binary())
def test_the_pool_carrier_round_trips_every_input(value: Any) -> None:
    # The worker's decoder, with the worker's ext_hook.
    raw = inputs.pack(msgspec.msgpack.Encoder(), value)
    back = msgspec.msgpack.decode(raw, ext_hook=inputs.unpack_ext)
    assert inputs.guard_bytes(back) == inputs.guard_bytes(value)


# -- end to end: lone surrogates ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["a\ud800b", {"k": ["x\ud800"]}, {"key\ud800": 1}], ids=["str", "nested", "key"]
)
def test_a_fail_open_guard_judges_a_lone_surrogate(enforcer: Enforcer, value: Any) -> None:
    # Before: the pool could not encode it, the job was an error, and on_error =
    # "allow" turned the guard into a warn that never saw the input.
    d = enforcer.run("r").check(Operation(labels=("op:sur",), input=value))
    assert d.action == "deny"
    assert d.reasons == ("a lone surrogate U+D800 in the input",)
    assert [(v.guard, v.outcome) for v in d.verdicts] == [("surrogates", "deny")]


def test_a_guard_using_ctx_regex_judges_a_lone_surrogate(enforcer: Enforcer) -> None:
    # re2 refuses to encode a lone surrogate; ctx.regex matches it as U+FFFD.
    run = enforcer.run("r")
    d = run.check(Operation(labels=("op:words",), input="word\ud800"))
    assert (d.action, d.reasons) == ("deny", ("not only words",))
    assert run.check(Operation(labels=("op:words",), input="only words")).action == "allow"


def test_a_reason_or_a_rewrite_holding_a_lone_surrogate_comes_back_from_the_worker(
    enforcer: Enforcer, tmp_path: Path
) -> None:
    # Before, the worker could not encode such an answer: an error, so a warn under
    # on_error = "allow", and a redaction guard let the unredacted text through.
    run = enforcer.run("q")
    d = run.check(Operation(labels=("op:quote",), input="a\ud800b"))
    assert (d.action, d.reasons) == ("deny", ("refused a\ud800b",))
    d = run.check(Operation(labels=("op:shout",), input="a\ud800b"))
    assert (d.action, d.input) == ("allow", "A\ud800B")
    # The ledger is UTF-8 text: the reason is recorded with the surrogate written out.
    with Ledger(tmp_path / "g.db", create=False) as ledger:
        reasons = [s.event.reason for s in ledger.events("q", kinds=["verdict"])]
        assert ledger.verify().ok
    assert reasons == ["refused a\\ud800b", "rewritten"]


def test_the_ledger_digest_is_the_digest_of_the_bytes_the_guard_saw(
    enforcer: Enforcer, tmp_path: Path
) -> None:
    for value in ("héllo \ud800 world", {"b": ["\udfff", 1.5, 2**70], "a": b"\x00\xff"}):
        d = enforcer.run("r").check(Operation(labels=("op:digest",), input=value))
        [reason] = d.reasons  # the guard warns with what it saw, computed in its worker
        event = check_event(tmp_path, d.id)
        data = inputs.guard_bytes(value)
        assert reason == f"saw {len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()}"
        digest = hashlib.sha256(data).hexdigest()
        assert (event.input_sha256, event.input_len) == (digest, len(data))
    # For text the bytes are plain UTF-8 (surrogatepass): anyone can recompute the digest.
    assert check_event(tmp_path, d.id).input_sha256 != ""
    text = "héllo \ud800 world"
    expected = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    assert inputs.input_digest(text) == expected


# -- end to end: the cap ------------------------------------------------------------------------


def exactly(size: int, kind: str) -> Any:
    """An input whose contract size is ``size``, of a kind the old measures disagreed on."""
    if kind == "multibyte":  # 2 bytes a character in UTF-8, and msgpack adds a header
        return "é" * (size // 2) + "x" * (size % 2)
    # Floats: 4 bytes each in this JSON, 9 in msgpack (the pool's old measure).
    base = {"f": [1.5] * 100, "pad": ""}
    pad = size - len(msgspec.json.encode(base, order="sorted"))
    return {"f": [1.5] * 100, "pad": "x" * pad}


@pytest.mark.parametrize("kind", ["multibyte", "structured"])
def test_exactly_the_cap_passes_everywhere_and_one_more_byte_is_a_deny(
    enforcer: Enforcer, tmp_path: Path, kind: str
) -> None:
    run = enforcer.run("cap")
    at_cap = exactly(CAP, kind)
    assert inputs.input_size(at_cap) == CAP
    d = run.check(Operation(labels=("op:cap",), input=at_cap))
    # Both the callable (through the pool) and the bank ran and allowed.
    assert d.action == "allow", d.reasons
    assert [(v.guard, v.outcome) for v in d.verdicts] == [("allow", "allow"), ("bank", "allow")]
    assert check_event(tmp_path, d.id).input_len == CAP

    over = exactly(CAP + 1, kind)
    assert inputs.input_size(over) == CAP + 1
    d = run.check(Operation(labels=("op:cap",), input=over))
    # on_error = "allow" does not apply: no guard ran.
    assert d.action == "deny" and d.verdicts == ()
    assert d.reasons == (f"input too large: {CAP + 1} bytes > max_input_bytes {CAP}; no guard ran",)


def test_a_settle_output_over_the_cap_is_a_deny_whatever_on_error_says(enforcer: Enforcer) -> None:
    run = enforcer.run("out")
    d = run.check(Operation(labels=("op:out",), input="go"))
    assert d.allowed
    s = run.settle(d, Usage(tokens=1), output="é" * CAP)
    assert s.action == "deny" and s.verdicts == ()
    assert s.reasons == (
        f"output too large: {2 * CAP} bytes > max_input_bytes {CAP}; no guard ran",
    )
    d = run.check(Operation(labels=("op:out",), input="go"))
    assert run.settle(d, Usage(tokens=1), output="é" * (CAP // 2)).action == "allow"


def test_an_input_outside_the_contract_is_a_deny_not_an_internal_error(
    enforcer: Enforcer,
) -> None:
    d = enforcer.run("r").check(Operation(labels=("op:sur",), input={"k": object()}))
    assert d.action == "deny" and d.verdicts == ()
    [reason] = d.reasons
    assert reason.startswith("input is not text, bytes or JSON-like data (dict)")
    assert "internal error" not in reason


def test_the_pool_caps_the_same_size_as_the_enforcer() -> None:
    from guardpool import GuardPool

    with GuardPool(workers=1, max_input_bytes=CAP) as pool:
        ok = pool.submit("builtins:len", exactly(CAP, "structured")).result(timeout=30)
        assert ok.outcome == "ok"
        over = pool.submit("builtins:len", exactly(CAP + 1, "structured")).result(timeout=30)
        assert (over.outcome, over.limit) == ("error", "input")
        assert f"{CAP + 1} bytes > max_input_bytes {CAP}" in over.error


# -- over HTTP, a real guardpool serve ----------------------------------------------------------


def write_policy(tmp_path: Path) -> Path:
    path = tmp_path / "p.toml"
    db = tmp_path / "s.db"
    path.write_text(
        f"[pool]\nworkers = 1\nmax_input_bytes = {CAP}\n"
        f'[[guard]]\nname = "surrogates"\nops = ["*"]\ncall = "{G}:deny_lone_surrogate"\n'
        'on_error = "allow"\n'
        f'[[guard]]\nname = "after"\nphase = "after"\nops = ["*"]\n'
        f'call = "{G}:deny_lone_surrogate"\non_error = "allow"\n'
        f'[store]\npath = "{db}"\n[audit]\npath = "{db}"\n'
    )
    return path


def test_an_escaped_lone_surrogate_over_http_reaches_the_guard(tmp_path: Path) -> None:
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    with Sidecar(write_policy(tmp_path)) as server, httpx.Client(headers=headers) as http:

        def post(path: str, body: bytes) -> httpx.Response:
            return http.post(f"{server.url}{path}", content=body, timeout=30)

        for given_input in (rb'"a\ud800b"', rb'{"k\ud800": [1.5, "x"]}', rb'["\ud800\u0041"]'):
            body = b'{"labels": ["op:x"], "run_id": "h", "input": ' + given_input + b"}"
            r = post("/v1/check", body)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["action"] == "deny", answer
            assert answer["reasons"] == ["a lone surrogate U+D800 in the input"]

        # Allowed input echoes back with its lone surrogate escaped, as it was sent.
        r = post("/v1/check", rb'{"labels": ["op:x"], "run_id": "h", "input": "fine \udc00"}')
        assert r.status_code == 200 and r.json()["action"] == "allow", r.text
        assert rb'"input":"fine \udc00"' in r.content
        decision_id = r.json()["id"]
        # And a settle's output: the after-guard judges it too (no reservation was
        # held, so the settle names the labels that pick the after-guards).
        r = post(
            "/v1/settle",
            b'{"run_id": "h", "decision_id": "' + decision_id.encode()
            + rb'", "labels": ["op:x"], "usage": {"tokens": 1}, "output": "out \ud800"}',
        )
        assert r.status_code == 200, r.text
        assert r.json()["reasons"] == ["a lone surrogate U+D800 in the input"], r.text

        # Anywhere else a lone surrogate is refused, naming the field.
        r = post("/v1/check", rb'{"labels": ["op:x"], "run_id": "h\ud800", "input": "\ud800"}')
        assert r.status_code == 422 and r.json()["field"] == "$.run_id", r.text
        r = post("/v1/check", rb'{"labels": ["op:x"], "input": "\ud800", "bogus": 1}')
        assert r.status_code == 422, r.text
        r = post("/v1/check", rb'{"labels": ["op:x"], "input": "\ud800"')
        assert r.status_code == 400, r.text
