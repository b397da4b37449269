"""Coverage-guided fuzzing of the worker message decoders: any bytes decode or raise a
decoding error — never anything else, never a hang.

msgspec reports invalid UTF-8 inside a msgpack string as ``UnicodeDecodeError``
rather than ``msgspec.DecodeError`` (found by this harness); both are accepted.

    python -m fuzz.harness_protocol [atheris options]     # or: make fuzz
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import msgspec

from guardpool.worker import protocol

_DECODERS: list[msgspec.msgpack.Decoder[Any]] = [
    msgspec.msgpack.Decoder(protocol.CallJob | protocol.GuardJob),
    msgspec.msgpack.Decoder(protocol.Ready | protocol.Done | protocol.Failed | protocol.Log),
    msgspec.msgpack.Decoder(protocol.Setup),
    msgspec.msgpack.Decoder(
        protocol.Spawn | protocol.ZygoteReady | protocol.Spawned | protocol.Exited
    ),
]


def TestOneInput(data: bytes) -> None:
    for decoder in _DECODERS:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            decoder.decode(data)


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
