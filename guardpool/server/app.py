"""The HTTP sidecar: the Python API over JSON, for hosts in any language.

    client ──HTTP──► auth (bearer, constant time) ──► bounded body read (413)
                     ──► msgspec decode (400 malformed / 422 schema)
                     ──► run.acheck / asettle / arelease ──► Decision JSON

Every route but ``/healthz`` needs the bearer token unless the server was
started with ``--no-auth`` (or on a Unix socket, where file permissions guard
access). Bodies are read with a cap, so an oversized request costs at most the
cap in memory. The Enforcer is started and closed by the app's lifespan, so
SIGTERM lets in-flight checks finish, then stops the pool and the ledger.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from guardpool.policy.labels import validate_label
from guardpool.policy.model import Decision, Operation
from guardpool.runner.enforcer import Enforcer
from guardpool.server.bodies import (
    CheckRequest,
    ErrorBody,
    Health,
    ReleaseRequest,
    ReleaseResponse,
    RunReport,
    SettleRequest,
)
from guardpool.server.hooks import routes as hook_routes
from guardpool.server.metrics import Metrics
from guardpool.server.openapi import render as render_openapi

T = TypeVar("T")

_JSON = "application/json"
_encode = msgspec.json.Encoder().encode


class HTTPError(Exception):
    def __init__(self, status: int, error: str, detail: str = "") -> None:
        self.status = status
        self.body = ErrorBody(error=error, detail=detail)


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encode(value), status_code=status, media_type=_JSON)


class Sidecar:
    def __init__(self, enforcer: Enforcer, *, token: str | None, max_body: int) -> None:
        self.enforcer = enforcer
        self.policy = enforcer.policy
        self.local_store = enforcer.policy.config.store.backend in ("memory", "sqlite")
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, enforcer)
        self.openapi = render_openapi()

    # -- plumbing

    def authorise(self, request: Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self.token):
            raise HTTPError(
                401, "unauthorized", "a valid 'Authorization: Bearer <token>' is required"
            )

    async def body(self, request: Request, kind: type[T]) -> T:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise HTTPError(413, "body too large", f"{length} bytes > {self.max_body}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise HTTPError(413, "body too large", f"more than {self.max_body} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HTTPError(400, "body is not UTF-8", f"byte {exc.start}") from None
        try:
            return msgspec.json.decode(raw, type=kind)
        except msgspec.ValidationError as exc:
            raise HTTPError(422, "invalid body", str(exc)) from None
        except msgspec.DecodeError as exc:
            raise HTTPError(400, "malformed JSON", str(exc)) from None

    # -- routes

    async def check(self, request: Request) -> Response:
        self.authorise(request)
        req = await self.body(request, CheckRequest)
        for i, label in enumerate(req.labels):
            try:
                validate_label(label)
            except ValueError as exc:
                raise HTTPError(422, "invalid body", f"{exc} - at `$.labels[{i}]`") from None
        if not req.labels:
            raise HTTPError(422, "invalid body", "labels must name at least one label")
        op = Operation(labels=tuple(req.labels), input=req.input, estimate=req.estimate)
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
        self.metrics.observe_check(decision, time.perf_counter() - start)
        return _json(decision)

    async def settle(self, request: Request) -> Response:
        self.authorise(request)
        req = await self.body(request, SettleRequest)
        decision: Decision = await _in_thread(
            self.enforcer.settle,
            req.decision_id,
            req.usage,
            req.output,
            run_id=req.run_id,
            principal=req.principal,
            labels=tuple(req.labels),
        )
        self.metrics.observe_settle(req.usage)
        return _json(decision)

    async def release(self, request: Request) -> Response:
        self.authorise(request)
        req = await self.body(request, ReleaseRequest)
        released = await self.enforcer.run(req.run_id).arelease(req.decision_id)
        return _json(ReleaseResponse(released=released))

    async def run_report(self, request: Request) -> Response:
        self.authorise(request)
        run_id = request.path_params["run_id"]
        principal = request.query_params.get("principal", "")
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


async def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn, *args, **kwargs)


def build_app(enforcer: Enforcer, *, token: str | None, max_body: int) -> Starlette:
    sidecar = Sidecar(enforcer, token=token, max_body=max_body)

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                response: Response = await handler(request)
                return response
            except HTTPError as exc:
                return _json(exc.body, exc.status)

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
        ],
        exception_handlers={404: not_found, 405: not_allowed},
        lifespan=lifespan,
    )
