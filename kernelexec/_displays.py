"""Outputs by display id, so that a display update reaches every output that shows that id.

A front end keeps one map from display id to the outputs showing it: a new ``display_data``
with an id already shown, or an ``update_display_data``, replaces the data of each of them. One
registry per call gives ``ExecutionResult.outputs`` that behaviour; a notebook run shares one
registry across its cells, as nbclient does, so a later cell can update an earlier cell's output.
"""

from __future__ import annotations

from typing import Any

from nbformat import NotebookNode, from_dict


class DisplayRegistry:
    """Which output nodes show which display id; a pure object, updated in place."""

    def __init__(self) -> None:
        self._nodes: dict[str, list[NotebookNode]] = {}

    def show(self, display_id: str, node: NotebookNode) -> None:
        """``node`` is a new output for ``display_id``: earlier ones take its data, then it joins."""
        self.update(display_id, node.get("data", {}), node.get("metadata", {}))
        self._nodes.setdefault(display_id, []).append(node)

    def update(self, display_id: str, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Give every output showing ``display_id`` this data and metadata."""
        for node in self._nodes.get(display_id, ()):
            node.data = from_dict(data)
            node.metadata = from_dict(metadata)

    def forget(self, display_id: str, node: NotebookNode) -> None:
        """``node`` was cleared or dropped: updates no longer reach it."""
        nodes = self._nodes.get(display_id)
        if nodes is None:
            return
        nodes[:] = [kept for kept in nodes if kept is not node]
        if not nodes:
            del self._nodes[display_id]
