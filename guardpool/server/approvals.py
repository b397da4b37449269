"""``POST /v1/approve`` and ``POST /v1/reject``: a human's answer to an ``ask`` decision.

    host UI ──{run_id, decision_id, by}──► auth, bounded body ──► enforcer.approve / reject
                                                                 ──► the Decision (same id)

An approved decision allows (settle it as usual); a rejected one is a deny and
its reservation is released. Both are audited with who answered. An id with no
pending ask answers a deny, not an error status: the operation must not run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from guardpool.policy.model import Decision
from guardpool.server.bodies import AnswerRequest

if TYPE_CHECKING:
    from guardpool.server.app import Sidecar


_encode = msgspec.json.Encoder().encode


def routes(sidecar: Sidecar, wrap: Callable[[Any], Any]) -> list[Route]:
    """The two routes, each wrapped like the sidecar's others (errors as JSON)."""

    async def answer(request: Request, approved: bool) -> Response:
        sidecar.authorise(request)
        req = await sidecar.body(request, AnswerRequest)
        if not req.by.strip():
            from guardpool.server.app import HTTPError

            raise HTTPError(422, "invalid body", "`by` must name who answered - at `$.by`")
        run = sidecar.enforcer.run(req.run_id)
        decision: Decision = await (
            run.aapprove(req.decision_id, by=req.by)
            if approved
            else run.areject(req.decision_id, by=req.by)
        )
        return Response(_encode(decision), media_type="application/json")

    async def approve(request: Request) -> Response:
        return await answer(request, True)

    async def reject(request: Request) -> Response:
        return await answer(request, False)

    return [
        Route("/v1/approve", wrap(approve), methods=["POST"]),
        Route("/v1/reject", wrap(reject), methods=["POST"]),
    ]
