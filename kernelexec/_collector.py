"""IOPub and shell messages of one request -> notebook outputs, bounded in size.

``OutputCollector`` is a pure protocol object: it is fed messages (plain dicts, as jupyter_client
deserialises them) and does no I/O of its own, so its tests feed it dicts instead of sockets.
It applies what a notebook front end applies (consecutive streams merged, ``clear_output`` with
and without ``wait``, ``update_display_data`` by display id) and keeps memory bounded whatever the
kernel sends: past ``max_output_bytes`` it keeps a head and a tail and counts what it dropped.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

from nbformat import NotebookNode
from nbformat.v4 import output_from_msg

from ._displays import DisplayRegistry
from ._traceback import plain_traceback

log = logging.getLogger("kernelexec")

OutputCallback = Callable[[NotebookNode], Any]
OUTPUT_TYPES = frozenset({"stream", "display_data", "execute_result", "error"})
# A gateway backend's stand-in for the gateway's "IOPub data rate exceeded" notice.
OUTPUT_DROPPED = "kernelexec_output_dropped"

# The moments nbclient records in a cell's ``metadata.execution`` (its ``record_timing``).
TIMING_KEYS = {
    ("status", "busy"): "iopub.status.busy",
    ("execute_input", None): "iopub.execute_input",
    ("execute_reply", None): "shell.execute_reply",
    ("status", "idle"): "iopub.status.idle",
}


def truncation_marker(dropped: int) -> str:
    return f"\n[... {dropped:,} bytes truncated ...]\n"


def dropped_marker(notice: str) -> str:
    reason = notice.strip().splitlines()[0].rstrip(".") if notice.strip() else "rate limit"
    return (
        f"\n[... output dropped by the gateway: {reason}; start the gateway with "
        "--ZMQChannelsWebsocketConnection.limit_rate=False to keep it ...]\n"
    )


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _bundle_size(data: dict[str, Any]) -> int:
    return sum(_size(value) if isinstance(value, str) else _size(str(value)) for value in data.values())


def _text_of(output: NotebookNode) -> str:
    """The part of an output an agent reads, as the spill file records it."""
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return plain_traceback(output.traceback) + "\n"
    plain = output.get("data", {}).get("text/plain", "")
    return plain + "\n" if plain else ""


@dataclass
class _Entry:
    """One output being collected; stream text is kept as pieces to make appends O(1)."""

    node: NotebookNode
    size: int
    pieces: list[str] = field(default_factory=list)
    display_id: str | None = None

    @property
    def is_stream(self) -> bool:
        return self.node.output_type == "stream"

    def finished(self) -> NotebookNode:
        if self.is_stream:
            self.node.text = "".join(self.pieces)
        return self.node


class OutputCollector:
    """Collects the outputs of one execute request, identified by its ``msg_id``.

    The request is complete when both its execute_reply (shell) and the kernel's ``idle`` status
    for it (iopub) have arrived: only then is every output in.
    """

    def __init__(
        self,
        msg_id: str,
        *,
        max_output_bytes: int,
        on_output: OutputCallback | None = None,
        open_spill: Callable[[], TextIO] | None = None,
        displays: DisplayRegistry | None = None,
    ) -> None:
        self.msg_id = msg_id
        self.reply: dict[str, Any] | None = None
        self.idle = False
        self.timing: dict[str, str] = {}
        self.truncated_bytes = 0
        self._head_limit = max_output_bytes // 2
        self._tail_limit = max_output_bytes - self._head_limit
        self._head: list[_Entry] = []
        self._head_size = 0
        self._tail: deque[_Entry] = deque()
        self._tail_size = 0
        self._clear_pending = False
        self._on_output = on_output
        self._open_spill = open_spill
        self._spill: TextIO | None = None
        self._displays = displays if displays is not None else DisplayRegistry()

    @property
    def complete(self) -> bool:
        return self.reply is not None and self.idle

    @property
    def spill_file(self) -> TextIO | None:
        return self._spill

    def feed(self, channel: str, msg: dict[str, Any]) -> None:
        """Take one message from the kernel; messages of other requests are ignored."""
        if msg.get("parent_header", {}).get("msg_id") != self.msg_id:
            return
        msg_type = msg["header"]["msg_type"]
        self._record_time(msg_type, msg)
        if channel == "shell":
            if msg_type == "execute_reply":
                self.reply = msg["content"]
        elif msg_type == "status":
            self.idle = self.idle or msg["content"].get("execution_state") == "idle"
        elif msg_type in OUTPUT_TYPES:
            display_id = msg["content"].get("transient", {}).get("display_id")
            self._add(output_from_msg(msg), display_id)
        elif msg_type == "clear_output":
            self._clear(wait=msg["content"].get("wait", False))
        elif msg_type == "update_display_data":
            self._update_display(msg["content"])
        elif msg_type == OUTPUT_DROPPED:
            # The gateway does not say how much it dropped: count it as at least one byte.
            marker = dropped_marker(msg["content"].get("text", ""))
            self._add(NotebookNode(output_type="stream", name="stderr", text=marker), None)
            self.truncated_bytes += 1

    def outputs(self) -> list[NotebookNode]:
        """The outputs so far, with a truncation marker where the middle was dropped."""
        nodes = [entry.finished() for entry in self._head]
        if self.truncated_bytes:
            marker = truncation_marker(self.truncated_bytes)
            nodes.append(NotebookNode(output_type="stream", name="stdout", text=marker))
        nodes.extend(entry.finished() for entry in self._tail)
        return nodes

    def _record_time(self, msg_type: str, msg: dict[str, Any]) -> None:
        state = msg["content"].get("execution_state") if msg_type == "status" else None
        key = TIMING_KEYS.get((msg_type, state))
        if key is not None:
            self.timing[key] = _timestamp(msg["header"].get("date"))

    # Front-end semantics

    def _add(self, node: NotebookNode, display_id: str | None) -> None:
        if self._clear_pending:
            self._clear(wait=False)
        self._notify(node)
        if node.output_type == "stream":
            self._add_stream(node.name, node.text)
            return
        size = _bundle_size(node.get("data", {})) if "data" in node else _size(_text_of(node))
        dropped_in_kernel = node.get("metadata", {}).get("kernelexec", {}).get("dropped_bytes")
        if isinstance(dropped_in_kernel, int):  # a display bigger than the budget, see _kernel_side
            self.truncated_bytes += dropped_in_kernel
        if display_id is not None:
            self._displays.show(display_id, node)
        self._place(_Entry(node, size, display_id=display_id))

    def _add_stream(self, name: str, text: str) -> None:
        size = _size(text)
        if not self._tail and self._head_size + size <= self._head_limit:
            last = self._head[-1] if self._head else None
            self._head_size += size
            if last is not None and last.is_stream and last.node.name == name:
                last.pieces.append(text)
                last.size += size
            else:
                self._head.append(self._stream_entry(name, text, size))
            return
        if not self._tail:  # fill the head to its limit, the rest goes to the tail
            room = self._head_limit - self._head_size
            head_part = _cut_to_size(text, room)
            if head_part:
                self._add_stream(name, head_part)
            text = text[len(head_part) :]
            size = _size(text)
        self._start_spill()
        self._write_spill(text)
        last = self._tail[-1] if self._tail else None
        if last is not None and last.is_stream and last.node.name == name:
            last.pieces.append(text)
            last.size += size
            self._tail_size += size
        else:
            self._tail.append(self._stream_entry(name, text, size))
            self._tail_size += size
        self._trim_tail()

    @staticmethod
    def _stream_entry(name: str, text: str, size: int) -> _Entry:
        return _Entry(NotebookNode(output_type="stream", name=name, text=""), size, pieces=[text])

    def _place(self, entry: _Entry) -> None:
        if not self._tail and self._head_size + entry.size <= self._head_limit:
            self._head.append(entry)
            self._head_size += entry.size
            return
        self._start_spill()
        self._write_spill(_text_of(entry.node))
        self._tail.append(entry)
        self._tail_size += entry.size
        self._trim_tail()

    def _trim_tail(self) -> None:
        """Drop the oldest tail outputs (never errors) until the tail fits its budget."""
        kept: deque[_Entry] = deque()
        while self._tail_size > self._tail_limit and self._tail:
            entry = self._tail.popleft()
            excess = self._tail_size - self._tail_limit
            if entry.node.output_type == "error":
                kept.append(entry)
                if not self._tail:
                    break
                continue
            if entry.is_stream and entry.size > excess:
                text = "".join(entry.pieces)
                kept_text = _keep_end(text, entry.size - excess)
                dropped = entry.size - _size(kept_text)
                entry.pieces = [kept_text]
                entry.size -= dropped
                self._tail_size -= dropped
                self.truncated_bytes += dropped
                kept.append(entry)
                break
            self._tail_size -= entry.size
            self.truncated_bytes += entry.size
            self._forget(entry)
        self._tail.extendleft(reversed(kept))

    def _clear(self, *, wait: bool) -> None:
        if wait:
            self._clear_pending = True
            return
        self._clear_pending = False
        self._notify(NotebookNode(output_type="clear_output"))
        for entry in self._entries():
            self._forget(entry)
        self._head, self._tail = [], deque()
        self._head_size = self._tail_size = self.truncated_bytes = 0

    def _update_display(self, content: dict[str, Any]) -> None:
        display_id = content.get("transient", {}).get("display_id")
        if display_id is None:
            return
        self._displays.update(display_id, content.get("data", {}), content.get("metadata", {}))
        self._notify(NotebookNode(output_type="update_display_data", **content))

    def _entries(self) -> Iterable[_Entry]:
        yield from self._head
        yield from self._tail

    def _forget(self, entry: _Entry) -> None:
        if entry.display_id is not None:
            self._displays.forget(entry.display_id, entry.node)

    # Side channels: the caller's callback and the spill file

    def _notify(self, node: NotebookNode) -> None:
        if self._on_output is None:
            return
        try:
            self._on_output(node)
        except Exception:  # a broken callback must not lose the call's outputs
            log.exception("on_output callback raised; outputs are still collected")

    def _start_spill(self) -> None:
        """On the first truncation, open the spill file and record the head kept so far."""
        if self._spill is not None or self._open_spill is None:
            return
        self._spill = self._open_spill()
        for entry in self._head:
            self._write_spill("".join(entry.pieces) if entry.is_stream else _text_of(entry.node))

    def _write_spill(self, text: str) -> None:
        if self._spill is not None:
            self._spill.write(text)


def _timestamp(date: Any) -> str:
    """A message's header date as nbclient writes it (ISO 8601, UTC, microseconds, ``Z``)."""
    if isinstance(date, datetime):
        if date.tzinfo is not None:
            date = date.astimezone(timezone.utc).replace(tzinfo=None)
        return date.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(date) if date else datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cut_to_size(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``max_bytes``."""
    if max_bytes <= 0:
        return ""
    if text.isascii():
        return text[:max_bytes]
    encoded = text.encode("utf-8", "surrogatepass")[:max_bytes]
    return encoded.decode("utf-8", "ignore")


def _keep_end(text: str, max_bytes: int) -> str:
    """The longest suffix of ``text`` whose UTF-8 encoding fits in ``max_bytes``."""
    if max_bytes <= 0:
        return ""
    if text.isascii():
        return text[-max_bytes:]
    encoded = text.encode("utf-8", "surrogatepass")[-max_bytes:]
    return encoded.decode("utf-8", "ignore")
