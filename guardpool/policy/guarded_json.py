"""JSON bodies whose guarded text holds an escaped lone surrogate (``"\\ud800"``):
sidecar requests (``input``, ``output``) and Claude Code hook payloads
(``tool_input``, ``tool_response``).

    raw body ──► msgspec decode (every body) ──► DecodeError naming a surrogate?
                 ──► stdlib json (which keeps lone surrogates) ──► input / output kept aside
                 ──► the rest re-encoded and decoded by msgspec as usual (schema, bounds)

msgspec refuses a lone surrogate escape as malformed JSON. For a label, an id or
money that is right: they are refused (422 naming the field). But the text a
guard inspects is hostile by definition, and a client that can get a lone
surrogate past the sidecar must not thereby keep it from the guards: the input
contract (``policy/inputs.py``) carries such text intact to every guard. Only
``input`` (a check) and ``output`` (a settle) may hold one — or, for a hook
payload, ``tool_input`` and ``tool_response``.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

#: The fields whose text guards judge: a lone surrogate there reaches them.
GUARDED_FIELDS = ("input", "output")

_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
# msgspec's complaints about a lone surrogate escape: an unpaired high one at
# the end of a string reads as "truncated", any other as "invalid utf-16".
_MSGSPEC_REASONS = ("surrogate", "truncated")
# Numbers are re-encoded as written: the schema (money, bounds) sees the text.
_encoder = msgspec.json.Encoder(decimal_format="number")


class BodyError(ValueError):
    """A body that is not acceptable even so; ``field`` is its JSON path when known."""

    def __init__(self, reason: str, field: str = "") -> None:
        super().__init__(reason)
        self.field = field


def may_hold_surrogates(raw: bytes, exc: msgspec.DecodeError) -> bool:
    """Whether msgspec refused ``raw`` for a lone surrogate escape (cheap test first)."""
    message = str(exc)
    return any(r in message for r in _MSGSPEC_REASONS) and _ESCAPE.search(raw) is not None


def decode(raw: bytes, kind: type[T], fields: tuple[str, ...] = GUARDED_FIELDS) -> T:
    """``raw`` as ``kind``, guarded fields holding lone surrogates as they were sent.

    Raises ``BodyError`` (400: not JSON; 422 with ``field``: a lone surrogate
    outside a guarded field) and msgspec's ``ValidationError`` (422).
    """
    try:
        body = json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)
        if not isinstance(body, dict):
            raise BodyError("the body must be a JSON object")
        guarded = {k: _floats(body.pop(k)) for k in fields if k in body}
        where = _first_surrogate(body, "$")
    except RecursionError:
        raise BodyError("nested too deeply") from None
    except BodyError:
        raise
    except ValueError as exc:  # JSONDecodeError, an integer past the digit limit
        raise BodyError(str(exc)) from None
    if where is not None:
        raise BodyError("not valid Unicode text (a lone surrogate)", where)
    value: T = msgspec.json.decode(_encoder.encode(body), type=kind)
    for name, v in guarded.items():
        if not hasattr(value, name):
            raise msgspec.ValidationError(f"Object contains unknown field `{name}`")
        setattr(value, name, v)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _floats(value: Any) -> Any:
    """Numbers with a fraction as floats, as msgspec gives them for ``Any``."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return value


def _first_surrogate(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _first_surrogate(v, f"{path}[{i}]")
            if found is not None:
                return found
    elif isinstance(value, dict):
        for k, v in value.items():
            if _SURROGATE.search(k):
                return f"{path} (a key)"
            found = _first_surrogate(v, f"{path}.{k}")
            if found is not None:
                return found
    return None
