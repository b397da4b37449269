"""Read timeouts for the sidecar's connections: a stalled client is closed, not kept.

uvicorn closes a connection that stays idle *between* requests
(``timeout_keep_alive``) but waits forever for the first byte, for the rest
of a request's headers, and for a body that never finishes: each such client
holds a socket and, for a body, a task, and a few thousand of them exhaust the
server's file descriptors. This protocol adds two timers::

    connection made / response sent ──► header timer (header_timeout_s)
        headers complete ──► header timer off, body timer on (body_timeout_s)
        body complete    ──► body timer off
    a timer fires ──► 408 (when nothing was answered yet) and close

The app never sees a stalled request: the connection is closed under it, its
``receive()`` reports a disconnect and its body read ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_BODY = b'{"error":"request timeout","detail":"the request was not received in time"}'
_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol with header and body read deadlines (see the module docstring)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_408)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_timer is None:
            self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # a queued request starts now: its headers are in
        super().on_response_complete()
        if not self.transport.is_closing() and not pipelined:
            # Waiting for the next request's headers (uvicorn's keep-alive timer
            # also runs; whichever is shorter closes an idle connection).
            self._arm(self.header_timeout_s)


def protocol(header_timeout_s: float, body_timeout_s: float) -> type[TimedHttpToolsProtocol]:
    """A protocol class with these timeouts, for ``uvicorn.Config(http=...)``."""
    return type(
        "TimedHttpToolsProtocol",
        (TimedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )
