"""Plain-text tracebacks and structured frames from what the kernel sends."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ._wire import ERROR_PAYLOAD_SOURCE

# CSI sequences (colours, cursor moves) and OSC sequences (hyperlinks) that IPython may emit.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class Frame(NamedTuple):
    """One frame of the user's code, innermost last in a traceback."""

    filename: str
    lineno: int | None
    name: str
    line: str


def strip_ansi(text: str) -> str:
    """Remove terminal colour and control sequences from ``text``."""
    return _ANSI.sub("", text)


def plain_traceback(traceback: Iterable[str]) -> str:
    """Join the kernel's traceback lines into one plain-text block, ANSI codes removed."""
    return strip_ansi("\n".join(traceback))


def error_payload(payloads: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The payload kernelexec's in-kernel hook attached to an execute_reply, if any."""
    for payload in payloads:
        if payload.get("source") == ERROR_PAYLOAD_SOURCE:
            return payload
    return None


def frames_from_payload(payload: Mapping[str, Any] | None) -> tuple[Frame, ...]:
    """Structured frames from the kernel's exception object, as sent in the error payload."""
    if not payload:
        return ()
    return tuple(
        Frame(str(filename), lineno, str(name), str(line))
        for filename, lineno, name, line in payload.get("frames", ())
    )
