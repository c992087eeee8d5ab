"""What the client and the kernel agree on: message shapes, names and limits (a leaf module).

The in-kernel source (``_kernel_side``) cannot import kernelexec, so the values it needs are
passed to its ``install()`` from here; nothing in the client reaches into that source for one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

Message = dict[str, Any]

# The sockets of a Jupyter kernel, as named in its connection file.
CHANNEL_NAMES = ("shell", "iopub", "stdin", "control", "hb")
# Longest stream message a prepared kernel sends (characters): bounds the client's memory per message.
MAX_MESSAGE_CHARS = 256 * 1024
# The source of the execute_reply payload that carries the exception's real frames.
ERROR_PAYLOAD_SOURCE = "kernelexec.error"
# The kernel's stderr file (a copy of what reaches fd 2) is emptied past this many bytes.
STDERR_KEEP_BYTES = 1024 * 1024
# A backend's notice that output was dropped before it reached us (a gateway's rate limit):
# content ``{"text": marker to show, "dropped_bytes": at least how much}``.
OUTPUT_DROPPED = "kernelexec.output_dropped"
# A prepared kernel's notice that it withheld the middle of a stream's output (see
# _kernel_bound): content ``{"name", "withheld_bytes", "spill_ranges": [[offset, length], ...]}``,
# the ranges of the withheld text (UTF-8) in the kernel's spill file, if the call has one.
OUTPUT_WITHHELD = "kernelexec.output_withheld"
# The execute_request content key asking a prepared kernel to bound the call's output itself:
# ``{"max_output_bytes", "spill_path": file for the withheld text or None, "notice": OUTPUT_WITHHELD}``.
OUTPUT_BOUND_KEY = "kernelexec_output"


def execute_content(
    code: str, *, silent: bool = False, allow_stdin: bool = False, output_bound: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The content of an ``execute_request`` for ``code`` (``output_bound``: see ``OUTPUT_BOUND_KEY``)."""
    content = {
        "code": code,
        "silent": silent,
        "store_history": not silent,
        "user_expressions": {},
        "allow_stdin": allow_stdin,
        "stop_on_error": True,
    }
    if output_bound is not None:
        content[OUTPUT_BOUND_KEY] = {**output_bound, "notice": OUTPUT_WITHHELD}
    return content


def parent_id(msg: Message) -> str | None:
    """The msg_id of the request ``msg`` answers, if any."""
    return msg.get("parent_header", {}).get("msg_id")


def header_timestamp(date: Any) -> str:
    """A message's header date as nbclient writes it (ISO 8601, UTC, microseconds, ``Z``)."""
    if date and not isinstance(date, datetime):
        return str(date)
    if not date:
        date = datetime.now(timezone.utc)
    if date.tzinfo is not None:
        date = date.astimezone(timezone.utc).replace(tzinfo=None)
    return date.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
