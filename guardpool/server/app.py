"""The HTTP sidecar: the Python API over JSON, for hosts in any language.

    client ──HTTP──► read timeouts (timeouts.py: 408 and close when stalled)
                     ──► auth (bearer, constant time) ──► bounded body read (413)
                     ──► msgspec decode, in a thread when large (400 malformed / 422 schema;
                         a lone surrogate escape in input/output: policy/guarded_json.py;
                         a key repeated in an object: 400, integrations/unique_keys.py)
                     ──► labels, ids, numbers, money bounded (422 naming the field)
                     ──► run.acheck / asettle / arelease ──► Decision JSON
                         (unknown decision id: 404; a denied one: 409)

Every route but ``/healthz`` and ``/openapi.json`` needs the bearer token
unless the server was started with ``--no-auth`` (or on a Unix socket, where
file permissions guard access); without a token on TCP, those routes answer
only a Host header that names the sidecar (``hosts.py``: DNS rebinding, 421)
and refuse a web page's request (an Origin header, 403). Bodies are read with
a cap, so an oversized request costs at most the cap in memory. Every answer
is JSON, errors included (``ErrorBody``: error, detail, field): a client
error is a 4xx naming the field, and a 500 means a bug in guardpool, logged
with its traceback. The Enforcer is started and closed by the app's lifespan,
so SIGTERM lets in-flight checks finish, then stops the pool and the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from guardpool.integrations import unique_keys
from guardpool.policy import guarded_json, inputs
from guardpool.policy.labels import validate_label
from guardpool.policy.model import Decision, Operation
from guardpool.runner.enforcer import Enforcer
from guardpool.server.approvals import routes as approval_routes
from guardpool.server.bodies import (
    CheckRequest,
    ErrorBody,
    Health,
    ReleaseRequest,
    ReleaseResponse,
    RunReport,
    SettleRequest,
)
from guardpool.server.decisions import DecisionBook
from guardpool.server.hooks import routes as hook_routes
from guardpool.server.hosts import HostCheck, HostRefused
from guardpool.server.metrics import Metrics
from guardpool.server.openapi import render as render_openapi

T = TypeVar("T")

log = logging.getLogger("guardpool.server")

_JSON = "application/json"
_encode = msgspec.json.Encoder().encode
# Bodies larger than this are decoded in a worker thread: decoding ~1 MB of
# JSON (or a long digit string into a Decimal) takes milliseconds that every
# other connection would otherwise wait for.
_DECODE_INLINE_MAX = 64 * 1024
_POST_INIT = re.compile(r"^Usage\.(\w+)")
_AT = re.compile(r"^(?P<reason>.*) - at `(?P<field>[^`]*)`(?: in `(?P<outer>[^`]*)`)?$", re.S)


class HTTPError(Exception):
    def __init__(self, status: int, error: str, detail: str = "", field: str = "") -> None:
        self.status = status
        self.body = ErrorBody(error=error, detail=detail, field=field)


def _invalid(exc: Exception) -> HTTPError:
    """A 422 from msgspec's ``reason - at `$.path``` (or a plain ValueError)."""
    m = _AT.match(str(exc))
    if m is None:
        return HTTPError(422, "invalid body", str(exc))
    field, reason = m.group("field"), m.group("reason")
    if m.group("outer"):  # "- at `key` in `$.usage.extra`": a bad key of that object
        field, reason = m.group("outer"), f"{reason} (in a key)"
    inner = _POST_INIT.match(reason)
    if inner is not None:  # Usage.__post_init__ names its own field: `$.estimate` + `.cost`
        field += f".{inner.group(1)}"
    return HTTPError(422, "invalid body", f"{reason} - at `{field}`", field)


def _json(value: Any, status: int = 200) -> Response:
    try:
        body = _encode(value)
    except UnicodeEncodeError:
        # The input (or a guard's reason quoting it) holds a lone surrogate:
        # JSON carries it as its \udXXX escape, as the client sent it.
        body = inputs.canonical_json(value)
    return Response(body, status_code=status, media_type=_JSON)


class Sidecar:
    def __init__(
        self,
        enforcer: Enforcer,
        *,
        token: str | None,
        max_body: int,
        hosts: HostCheck | None = None,
    ) -> None:
        self.enforcer = enforcer
        self.hosts = hosts
        self.policy = enforcer.policy
        self.local_store = enforcer.policy.config.store.backend in ("memory", "sqlite")
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, enforcer)
        self.decisions = DecisionBook(enforcer.ledger)
        self.openapi = render_openapi()

    # -- plumbing

    def authorise(self, request: Request) -> None:
        """The Host check (server/hosts.py: DNS rebinding), then the bearer token.

        Every route a token protects calls this; /healthz and /openapi.json do not.
        """
        if self.hosts is not None:
            try:
                self.hosts.check(request.scope["headers"])
            except HostRefused as exc:
                raise HTTPError(421, "misdirected request", str(exc)) from None
        if self.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self.token):
            raise HTTPError(
                401, "unauthorized", "a valid 'Authorization: Bearer <token>' is required"
            )

    def refuse_browsers(self, request: Request) -> None:
        """Without a token, 403 for a request a web page made (it carries an Origin header).

        Browsers send Origin with every cross-site POST, and with a page's own POST
        after a DNS rebinding. A ``--no-auth`` sidecar on loopback was open to any
        page in the user's browser: a ``text/plain`` POST needs no CORS preflight,
        so the page could check, settle, release and approve. With a token a page
        has nothing to send; a Unix socket is out of a browser's reach.
        """
        if self.token is None and "origin" in request.headers:
            raise HTTPError(
                403,
                "forbidden",
                "a request from a web page (an Origin header) to a sidecar without a token "
                "is refused (start the sidecar with --token if a browser-based host must call it)",
            )

    async def body(self, request: Request, kind: type[T]) -> T:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise HTTPError(413, "body too large", f"{length} bytes > {self.max_body}")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise HTTPError(413, "body too large", f"more than {self.max_body} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            # The client went away (or the body timeout closed it): nobody reads this.
            raise HTTPError(400, "incomplete body", "the client disconnected") from None
        raw = b"".join(chunks)
        if len(raw) > _DECODE_INLINE_MAX:
            return await asyncio.to_thread(_decode, raw, kind)
        return _decode(raw, kind)

    # -- routes

    async def check(self, request: Request) -> Response:
        self.authorise(request)
        req = await self.body(request, CheckRequest)
        if not req.labels:
            raise HTTPError(422, "invalid body", "labels must name at least one label", "$.labels")
        _check_labels(req.labels)
        try:
            op = Operation(labels=tuple(req.labels), input=req.input, estimate=req.estimate)
        except ValueError as exc:  # pragma: no cover - every field was checked above
            raise _invalid(exc) from None
        start = time.perf_counter()
        run = self.enforcer.run(req.run_id, req.principal)
        if self.local_store and not any(
            g.kind == "callable" for g in self.policy.guards_for(op.labels, "before")
        ):
            # RE2 banks and local budget/ledger writes only, well under a millisecond:
            # a thread hop would cost more than the check.
            decision = run.check(op)
        else:
            # May wait for a worker, or for a remote store up to its timeout.
            decision = await run.acheck(op)
        self.decisions.record(decision)
        self.metrics.observe_check(decision, time.perf_counter() - start)
        return _json(decision)

    async def known(self, run_id: str, decision_id: str) -> None:
        """404 unless this run was given this decision; 409 when it was a denial."""
        allowed = await _in_thread(self.decisions.lookup, run_id, decision_id)
        if allowed is None:
            raise HTTPError(
                404,
                "unknown decision",
                f"no decision {decision_id!r} was issued to run {run_id!r}",
                "$.decision_id",
            )
        if not allowed:
            raise HTTPError(
                409,
                "decision was denied",
                f"decision {decision_id!r} denied the operation: there is nothing to settle",
                "$.decision_id",
            )

    async def settle(self, request: Request) -> Response:
        self.authorise(request)
        req = await self.body(request, SettleRequest)
        _check_labels(req.labels)
        await self.known(req.run_id, req.decision_id)
        try:
            decision: Decision = await _in_thread(
                self.enforcer.settle,
                req.decision_id,
                req.usage,
                req.output,
                run_id=req.run_id,
                principal=req.principal,
                labels=tuple(req.labels),
            )
        except ValueError as exc:  # a store refusing an amount it cannot hold
            raise HTTPError(422, "invalid body", str(exc), "$.usage") from None
        self.metrics.observe_settle(req.usage)
        return _json(decision)

    async def release(self, request: Request) -> Response:
        self.authorise(request)
        req = await self.body(request, ReleaseRequest)
        await self.known(req.run_id, req.decision_id)
        released = await self.enforcer.run(req.run_id).arelease(req.decision_id)
        return _json(ReleaseResponse(released=released))

    async def run_report(self, request: Request) -> Response:
        self.authorise(request)
        run_id = request.path_params["run_id"]
        # The server decoded the path and the query with errors replaced: %FF became
        # U+FFFD, the report of another run (or principal). The raw bytes tell.
        for name, raw in (
            ("run_id", request.scope.get("raw_path") or b""),
            ("principal", request.scope.get("query_string") or b""),
        ):
            try:
                urllib.parse.unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise HTTPError(
                    422, f"invalid {name}", f"not UTF-8 (byte {exc.start})", name
                ) from None
        principal = request.query_params.get("principal", "")
        for name, value in (("run_id", run_id), ("principal", principal)):
            if len(value) > 256 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                raise HTTPError(422, f"invalid {name}", "at most 256 printable characters", name)
        limits = await _in_thread(self.enforcer.usage, run_id, principal)
        summary = await _in_thread(self.enforcer.ledger.summary, run_id)
        return _json(
            RunReport(run_id=run_id, principal=principal, limits=list(limits), audit=summary)
        )

    async def healthz(self, request: Request) -> Response:
        pool = self.enforcer.pool
        return _json(Health(status="ok", workers=pool.stats().workers if pool else 0))

    async def metrics_route(self, request: Request) -> Response:
        self.authorise(request)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi_route(self, request: Request) -> Response:
        return Response(self.openapi, media_type=_JSON)


def _decode(raw: bytes, kind: type[T]) -> T:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(400, "body is not UTF-8", f"byte {exc.start}") from None
    try:
        try:
            body = msgspec.json.decode(raw, type=kind)
        except msgspec.ValidationError:
            raise
        except msgspec.DecodeError as exc:
            if not guarded_json.may_hold_surrogates(raw, exc):
                raise
            body = guarded_json.decode(raw, kind)  # guarded text with a lone surrogate
        unique_keys.check(raw)  # a repeated key: the client and the guards may read apart
        return body
    except unique_keys.DuplicateKey as exc:
        raise HTTPError(400, "duplicate key", str(exc)) from None
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "malformed JSON", str(exc)) from None
    except guarded_json.BodyError as exc:
        if exc.field:
            raise HTTPError(422, "invalid body", f"{exc} - at `{exc.field}`", exc.field) from None
        raise HTTPError(400, "malformed JSON", str(exc)) from None
    except RecursionError:
        raise HTTPError(400, "malformed JSON", "nested too deeply") from None
    except ValueError as exc:  # the second pass refused what msgspec took: fail closed
        raise HTTPError(400, "malformed JSON", str(exc)) from None


def _check_labels(labels: list[str]) -> None:
    for i, label in enumerate(labels):
        try:
            validate_label(label)
        except ValueError as exc:
            raise HTTPError(
                422, "invalid body", f"{exc} - at `$.labels[{i}]`", f"$.labels[{i}]"
            ) from None


async def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


_INTERNAL = ErrorBody(
    error="internal error",
    detail="a bug in guardpool (the server log has the traceback); please report it",
)


def build_app(
    enforcer: Enforcer, *, token: str | None, max_body: int, hosts: HostCheck | None = None
) -> Starlette:
    sidecar = Sidecar(enforcer, token=token, max_body=max_body, hosts=hosts)

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                sidecar.refuse_browsers(request)
                response: Response = await handler(request)
                return response
            except HTTPError as exc:
                return _json(exc.body, exc.status)
            except Exception:
                log.exception("guardpool serve: %s %s failed", request.method, request.url.path)
                return _json(_INTERNAL, 500)

        return endpoint

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        enforcer.start()
        try:
            yield
        finally:
            # Runs after uvicorn has let in-flight requests finish.
            enforcer.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(ErrorBody(error="not found", detail=request.url.path), 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _json(ErrorBody(error="method not allowed", detail=request.method), 405)

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("guardpool serve: %s %s failed", request.method, request.url.path, exc_info=exc)
        return _json(_INTERNAL, 500)

    return Starlette(
        routes=[
            Route("/v1/check", guarded(sidecar.check), methods=["POST"]),
            Route("/v1/settle", guarded(sidecar.settle), methods=["POST"]),
            Route("/v1/release", guarded(sidecar.release), methods=["POST"]),
            Route("/v1/runs/{run_id}", guarded(sidecar.run_report), methods=["GET"]),
            Route("/healthz", sidecar.healthz, methods=["GET"]),
            Route("/metrics", guarded(sidecar.metrics_route), methods=["GET"]),
            Route("/openapi.json", sidecar.openapi_route, methods=["GET"]),
            *hook_routes(sidecar),
            *approval_routes(sidecar, guarded),
        ],
        exception_handlers={404: not_found, 405: not_allowed, Exception: internal},
        lifespan=lifespan,
    )
