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

from nbformat import NotebookNode, from_dict
from nbformat.v4 import output_from_msg

from ._displays import DisplayRegistry
from ._result import output_text

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


class _Pieces:
    """Stream text kept as the pieces it arrived in: appending a piece and dropping bytes from the
    front each cost what they add or drop, never a copy of the whole text."""

    def __init__(self) -> None:
        self._pieces: deque[str] = deque()
        self._sizes: deque[int] = deque()  # UTF-8 bytes of each piece, from _start for the first
        self._start = 0  # characters of the first piece already dropped

    def append(self, text: str, size: int) -> None:
        self._pieces.append(text)
        self._sizes.append(size)

    def drop_front(self, excess: int) -> int:
        """Drop the shortest prefix of whole characters of at least ``excess`` bytes; its size."""
        dropped = 0
        while self._pieces and self._sizes[0] <= excess - dropped:
            dropped += self._sizes.popleft()
            self._pieces.popleft()
            self._start = 0
        if self._pieces and dropped < excess:
            need = excess - dropped
            chars, cut = _prefix_of_at_least(self._pieces[0], self._start, self._sizes[0], need)
            self._start += chars
            self._sizes[0] -= cut
            dropped += cut
            if not self._sizes[0]:
                self._pieces.popleft()
                self._sizes.popleft()
                self._start = 0
        return dropped

    def text(self) -> str:
        if self._start:
            self._pieces[0] = self._pieces[0][self._start :]
            self._start = 0
        return "".join(self._pieces)


@dataclass
class _Entry:
    """One output being collected; stream text is kept as pieces to make appends O(1)."""

    node: NotebookNode
    size: int
    pieces: _Pieces = field(default_factory=_Pieces)
    display_id: str | None = None

    @property
    def is_stream(self) -> bool:
        return self.node.output_type == "stream"

    def finished(self) -> NotebookNode:
        if self.is_stream:
            self.node.text = self.pieces.text()
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
        self.started = False  # the kernel said it runs the code (execute_input or output)
        # An interrupt was sent while the request ran: the kernel may finish it without a reply.
        self.interrupt_sent = False
        self.timing: dict[str, str] = {}
        self.truncated_bytes = 0
        self._head_limit = max_output_bytes // 2
        self._tail_limit = max_output_bytes - self._head_limit
        self._head: list[_Entry] = []
        self._head_size = 0
        self._tail: deque[_Entry] = deque()
        self._tail_size = 0
        self._head_full = False  # outputs go to the tail (and the spill file) until a clear
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
            return
        self.started = True
        if msg_type in OUTPUT_TYPES:
            display_id = msg["content"].get("transient", {}).get("display_id")
            self._add(output_from_msg(msg), display_id)
        elif msg_type == "clear_output":
            self._clear(wait=msg["content"].get("wait", False))
        elif msg_type == "update_display_data":
            content = msg["content"]
            display_id = content.get("transient", {}).get("display_id")
            if display_id is not None:
                self._update_display(display_id, content.get("data", {}), content.get("metadata", {}))
                self._notify(NotebookNode(output_type="update_display_data", **content))
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
        size = _bundle_size(node.get("data", {})) if "data" in node else _size(output_text(node))
        dropped_in_kernel = node.get("metadata", {}).get("kernelexec", {}).get("dropped_bytes")
        if isinstance(dropped_in_kernel, int):  # a display bigger than the budget, see _kernel_side
            self.truncated_bytes += dropped_in_kernel
        if display_id is not None:  # the outputs already showing this id take its data
            self._update_display(display_id, node.get("data", {}), node.get("metadata", {}))
            self._displays.show(display_id, node)
        self._place(_Entry(node, size, display_id=display_id))

    def _add_stream(self, name: str, text: str) -> None:
        size = _size(text)
        if not self._head_full and self._head_size + size <= self._head_limit:
            last = self._head[-1] if self._head else None
            self._head_size += size
            if last is not None and last.is_stream and last.node.name == name:
                last.pieces.append(text, size)
                last.size += size
            else:
                self._head.append(self._stream_entry(name, text, size))
            return
        if not self._head_full:  # fill the head to its limit, the rest goes to the tail
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
            last.pieces.append(text, size)
            last.size += size
            self._tail_size += size
        else:
            self._tail.append(self._stream_entry(name, text, size))
            self._tail_size += size
        self._trim_tail()

    @staticmethod
    def _stream_entry(name: str, text: str, size: int) -> _Entry:
        entry = _Entry(NotebookNode(output_type="stream", name=name, text=""), size)
        entry.pieces.append(text, size)
        return entry

    def _place(self, entry: _Entry) -> None:
        if not self._head_full and self._head_size + entry.size <= self._head_limit:
            self._head.append(entry)
            self._head_size += entry.size
            return
        self._start_spill()
        self._write_spill(output_text(entry.node))
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
                dropped = entry.pieces.drop_front(excess)
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
        self._head_full = False
        if self._spill is not None:  # it records what the outputs hold: nothing, now
            self._spill.seek(0)
            self._spill.truncate()

    def _update_display(self, display_id: str, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Give every output showing ``display_id`` this data, counted against the byte budget."""
        size = _bundle_size(data)
        ours = {id(entry.node): entry for entry in self._entries() if entry.display_id == display_id}
        for node in self._displays.nodes(display_id):
            entry = ours.get(id(node))
            if entry is None and size > self._tail_limit:
                # An earlier call's output (a notebook's shared registry): this call would drop a
                # display this big, so the earlier output keeps its data and the bytes count here.
                self._start_spill()
                self.truncated_bytes += size
                continue
            node.data, node.metadata = from_dict(data), from_dict(metadata)
            if entry is not None:
                self._resize(entry, size)

    def _resize(self, entry: _Entry, size: int) -> None:
        """A display's data was replaced: keep it within the budget as a new display would be."""
        old_size, entry.size = entry.size, size
        index = next((i for i, kept in enumerate(self._head) if kept is entry), None)
        if index is None:  # in the tail: trimming drops the oldest outputs until it fits
            self._tail_size += size - old_size
            self._trim_tail()
            return
        if self._head_size + size - old_size <= self._head_limit:
            self._head_size += size - old_size
            return
        # Too big for the head: dropped, and the marker goes where it was.
        self._start_spill()
        later = self._head[index + 1 :]
        del self._head[index:]
        moved = sum(kept.size for kept in later)
        self._head_size -= old_size + moved
        self.truncated_bytes += size
        self._forget(entry)
        self._tail.extendleft(reversed(later))
        self._tail_size += moved
        self._trim_tail()

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
        """The head is full: later outputs go to the tail, and the spill file records the head
        kept so far and from now on everything (opened on the first truncation of the call)."""
        if self._head_full:
            return
        self._head_full = True
        if self._open_spill is None:
            return
        if self._spill is None:
            self._spill = self._open_spill()
        for entry in self._head:
            self._write_spill(output_text(entry.finished()))

    def _write_spill(self, text: str) -> None:
        if self._spill is not None:
            self._spill.write(text)


def _timestamp(date: Any) -> str:
    """A message's header date as nbclient writes it (ISO 8601, UTC, microseconds, ``Z``)."""
    if date and not isinstance(date, datetime):
        return str(date)
    if not date:
        date = datetime.now(timezone.utc)
    if date.tzinfo is not None:
        date = date.astimezone(timezone.utc).replace(tzinfo=None)
    return date.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cut_to_size(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``max_bytes``."""
    if max_bytes <= 0:
        return ""
    if text.isascii():
        return text[:max_bytes]
    encoded = text.encode("utf-8", "surrogatepass")[:max_bytes]
    return encoded.decode("utf-8", "ignore")


def _prefix_of_at_least(text: str, start: int, size: int, min_bytes: int) -> tuple[int, int]:
    """Characters and UTF-8 bytes of the shortest prefix of ``text[start:]`` (``size`` bytes) of
    at least ``min_bytes`` bytes; the cost is that of the prefix, not of the text."""
    if size == len(text) - start:  # ASCII: a byte per character
        return min_bytes, min_bytes
    encoded = text[start : start + min_bytes].encode("utf-8", "surrogatepass")  # >= min_bytes
    end = min_bytes
    while end < len(encoded) and encoded[end] & 0xC0 == 0x80:  # finish the character cut in two
        end += 1
    return len(encoded[:end].decode("utf-8", "surrogatepass")), end
