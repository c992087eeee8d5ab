"""The running cell's outputs as they arrive, for what is written before the cell is over.

A finished cell gets its outputs from its ``ExecutionResult``. A run that is interrupted (Ctrl-C,
SIGTERM) or saved in the middle of a long cell has no result for that cell yet, only what the
session's ``on_output`` callback reported: ``LiveOutputs`` applies those reports as a front end
does (consecutive stream text merged, ``clear_output`` empties the list; display updates need
nothing, since the nodes it holds are the collector's own, which the updates change in place).
Its text is bounded: past ``max_bytes`` the oldest pieces give way, with a marker saying how much.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from nbformat import NotebookNode

from ._collector import truncation_marker


@dataclass
class _Piece:
    node: NotebookNode  # a stream node of ours, or the collector's node of any other output
    texts: deque[tuple[str, int]] = field(default_factory=deque)  # a stream's text and sizes
    size: int = 0


class LiveOutputs:
    """Outputs of the running cell, fed with each node the session reports; a pure object."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._pieces: deque[_Piece] = deque()
        self._size = 0
        self.dropped_bytes = 0

    def add(self, node: NotebookNode) -> None:
        """Take one reported node (``on_output``)."""
        kind = node.get("output_type")
        if kind == "clear_output":  # the collector reports it when the clear takes effect
            self._pieces.clear()
            self._size = self.dropped_bytes = 0
        elif kind == "stream":
            last = self._pieces[-1] if self._pieces else None
            if last is None or last.node.get("output_type") != "stream" or last.node.name != node.name:
                last = _Piece(NotebookNode(output_type="stream", name=node.name, text=""))
                self._pieces.append(last)
            self._grow(last, node.text)
        elif kind in ("display_data", "execute_result", "error"):
            self._pieces.append(_Piece(node, size=len(str(node.get("data", "")))))
            self._size += self._pieces[-1].size
        self._trim()

    def outputs(self) -> list[NotebookNode]:
        """The outputs so far (stream nodes are ours to fill; the rest are shared)."""
        nodes = []
        if self.dropped_bytes:
            marker = truncation_marker(self.dropped_bytes)
            nodes.append(NotebookNode(output_type="stream", name="stdout", text=marker))
        for piece in self._pieces:
            if len(piece.texts) > 1:  # join once, not at every save
                piece.texts = deque([("".join(text for text, _ in piece.texts), piece.size)])
            if piece.texts:
                piece.node.text = piece.texts[0][0]
            nodes.append(piece.node)
        return nodes

    def _grow(self, piece: _Piece, text: str) -> None:
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        piece.texts.append((text, size))
        piece.size += size
        self._size += size

    def _trim(self) -> None:
        """Drop the oldest outputs (whole, or a stream's oldest pieces) until the rest fits."""
        while self._size > self._max_bytes and len(self._pieces) > 1:
            piece = self._pieces.popleft()
            self._size -= piece.size
            self.dropped_bytes += piece.size
        if self._size > self._max_bytes and self._pieces and self._pieces[0].texts:
            piece = self._pieces[0]
            while self._size > self._max_bytes and len(piece.texts) > 1:
                _, size = piece.texts.popleft()
                piece.size -= size
                self._size -= size
                self.dropped_bytes += size
