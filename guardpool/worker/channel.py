"""The worker's end of its two sockets: framed jobs in, answers and log records out.

    host ──jobs socketpair──► Channel.recv ─► Worker.run
    Worker ─► Channel.send / ForwardingHandler ──answers socketpair──► host

Used by ``main.Worker``; the host's end is ``runner/worker_link.py``.
"""

from __future__ import annotations

import collections
import logging
import os
import socket

import msgspec

from guardpool.policy import inputs
from guardpool.worker import protocol


class Channel:
    """Blocking, length-framed reads and writes on the worker's two sockets.

    Jobs come in on one socketpair and answers go out on another. With one pair for
    both, the host reading an answer frees room in the worker's send buffer, and the
    kernel wakes whoever sleeps in ``recv`` on that socket ("room to write"): the worker
    had to sleep in ``poll`` (which filters that wake-up) and then ``recv``, two system
    calls per job; and the host could not sleep in ``recv`` either, since the worker
    reading a job woke it the same way. With two pairs each side sleeps in one
    ``recv`` (see runner/caller_read.py).
    """

    def __init__(self, jobs: socket.socket, answers: socket.socket) -> None:
        self.sock = jobs
        self.out = answers
        self.reader = protocol.FrameReader()
        # ext_hook: a job's input may carry text with a lone surrogate (policy/inputs.pack).
        self.decoder = msgspec.msgpack.Decoder(protocol.HostMsg, ext_hook=inputs.unpack_ext)
        self.pending: collections.deque[protocol.HostMsg] = collections.deque()
        self.encoder = msgspec.msgpack.Encoder()
        # One receive buffer for the worker's life: ``recv(256 KiB)`` would mmap, shrink
        # and unmap a fresh bytes object on every job (three syscalls each time). Made on
        # the first read, so what a worker needs to start up stays what it was.
        self.rbuf = bytearray()
        self.rview = memoryview(self.rbuf)

    def send(self, msg: msgspec.Struct) -> None:
        self.out.sendall(protocol.frame(self.encoder, msg))

    def recv(self) -> protocol.HostMsg | None:
        """The next job, or None at EOF (the host closed our pipe: stop)."""
        while not self.pending:
            if not self.rbuf:
                self.rbuf = bytearray(1 << 18)
                self.rview = memoryview(self.rbuf)
            n = self.sock.recv_into(self.rbuf)
            if not n:
                return None
            self.pending.extend(self.reader.decode_chunk(self.rview[:n], self.decoder))
        return self.pending.popleft()


class ForwardingHandler(logging.Handler):
    """Sends every record to the host as a ``Log`` message over the worker's own pipe.

    No lock is shared with any other process: a worker killed mid-record can at
    worst truncate its own pipe, which the host then discards with the worker.
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = ""
            if record.exc_info:
                exc_text = logging.Formatter().formatException(record.exc_info)
            self.channel.send(
                protocol.Log(
                    name=record.name,
                    level=record.levelno,
                    msg=record.getMessage(),
                    pathname=record.pathname,
                    lineno=record.lineno,
                    func=record.funcName or "",
                    created=record.created,
                    exc_text=exc_text,
                    pid=os.getpid(),
                )
            )
        except Exception:
            self.handleError(record)
