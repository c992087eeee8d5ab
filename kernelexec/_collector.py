"""IOPub and shell messages of one request -> notebook outputs, bounded in size.

``OutputCollector`` is a pure protocol object: it is fed messages (plain dicts, as jupyter_client
deserialises them) and does no I/O of its own, so its tests feed it dicts instead of sockets.
It applies what a notebook front end applies (consecutive streams merged, ``clear_output`` with
and without ``wait``, ``update_display_data`` by display id) and keeps memory bounded whatever the
kernel sends: past ``max_output_bytes`` it keeps a head and a tail and counts what it dropped.
What it drops goes to an optional ``SpillSink`` (``_spill.SpillFile`` writes it to a file).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nbformat import NotebookNode, from_dict
from nbformat.v4 import output_from_msg

from ._displays import DisplayRegistry
from ._result import output_text
from ._text import Pieces, cut_to_size
from ._text import utf8_size as _size
from ._wire import OUTPUT_DROPPED, OUTPUT_WITHHELD, header_timestamp, parent_id

log = logging.getLogger("kernelexec")

OutputCallback = Callable[[NotebookNode], Any]
OUTPUT_TYPES = frozenset({"stream", "display_data", "execute_result", "error"})

# The moments nbclient records in a cell's ``metadata.execution`` (its ``record_timing``).
TIMING_KEYS = {
    ("status", "busy"): "iopub.status.busy",
    ("execute_input", None): "iopub.execute_input",
    ("execute_reply", None): "shell.execute_reply",
    ("status", "idle"): "iopub.status.idle",
}


def truncation_marker(dropped: int) -> str:
    return f"\n[... {dropped:,} bytes truncated ...]\n"


def _bundle_size(data: dict[str, Any]) -> int:
    return sum(_size(value) if isinstance(value, str) else _size(str(value)) for value in data.values())


@dataclass
class _Entry:
    """One output being collected; stream text is kept as pieces to make appends O(1)."""

    node: NotebookNode
    size: int
    pieces: Pieces = field(default_factory=Pieces)
    display_id: str | None = None

    @property
    def is_stream(self) -> bool:
        return self.node.output_type == "stream"

    def finished(self) -> NotebookNode:
        if self.is_stream:
            self.node.text = self.pieces.text()
        return self.node


class SpillSink(Protocol):
    """Where the full text of a truncated call goes."""

    def open(self) -> None:
        """The output is being truncated from now on."""

    def write(self, text: str) -> None:
        """Record ``text``, in output order."""

    def clear(self) -> None:
        """Forget everything recorded: a ``clear_output`` emptied the outputs."""

    def splice(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Record the text the kernel withheld, from these byte ranges of its file."""


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
        spill: SpillSink | None = None,
        displays: DisplayRegistry | None = None,
    ) -> None:
        self.msg_id = msg_id
        self.reply: dict[str, Any] | None = None
        self.idle = False
        self.started = False  # the kernel said it runs the code (execute_input or output)
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
        self._spill = spill
        self._displays = displays if displays is not None else DisplayRegistry()

    @property
    def spill(self) -> SpillSink | None:
        return self._spill

    @property
    def complete(self) -> bool:
        return self.reply is not None and self.idle

    def feed(self, channel: str, msg: dict[str, Any]) -> None:
        """Take one message from the kernel; messages of other requests are ignored."""
        if parent_id(msg) != self.msg_id:
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
        elif msg_type == OUTPUT_WITHHELD:
            self._withheld(msg["content"])
        elif msg_type == OUTPUT_DROPPED:  # before it reached us: say so where it happened
            content = msg["content"]
            self._add(NotebookNode(output_type="stream", name="stderr", text=content["text"]), None)
            self.truncated_bytes += int(content.get("dropped_bytes", 1))

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
            self.timing[key] = header_timestamp(msg["header"].get("date"))

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
            head_part = cut_to_size(text, room)
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

    def _withheld(self, content: dict[str, Any]) -> None:
        """The kernel kept back part of a stream that the tail would have dropped on arrival
        (see ``_kernel_bound``): count it as dropped, and put its text in the spill file."""
        self._start_spill()
        ranges = content.get("spill_ranges") or []
        if self._spill is not None and ranges:
            self._spill.splice([(int(offset), int(length)) for offset, length in ranges])
        self.truncated_bytes += int(content.get("withheld_bytes", 0))

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
            self._spill.clear()

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
        if self._spill is None:
            return
        self._spill.open()
        for entry in self._head:
            self._write_spill(output_text(entry.finished()))

    def _write_spill(self, text: str) -> None:
        if self._spill is not None:
            self._spill.write(text)
