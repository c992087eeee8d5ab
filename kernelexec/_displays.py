"""Outputs by display id, so that a display update reaches every output that shows that id.

A front end keeps one map from display id to the outputs showing it: a new ``display_data``
with an id already shown, or an ``update_display_data``, replaces the data of each of them. One
registry per call gives ``ExecutionResult.outputs`` that behaviour; a notebook run shares one
registry across its cells, as nbclient does, so a later cell can update an earlier cell's output.
"""

from __future__ import annotations

from nbformat import NotebookNode


class DisplayRegistry:
    """Which output nodes show which display id; a pure object.

    The collector replaces the data of the nodes (it counts their size against its budget); the
    registry only says which nodes an update reaches.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, list[NotebookNode]] = {}

    def nodes(self, display_id: str) -> list[NotebookNode]:
        """The outputs showing ``display_id`` now."""
        return list(self._nodes.get(display_id, ()))

    def show(self, display_id: str, node: NotebookNode) -> None:
        """``node`` is a new output for ``display_id``: later updates reach it."""
        self._nodes.setdefault(display_id, []).append(node)

    def forget(self, display_id: str, node: NotebookNode) -> None:
        """``node`` was cleared or dropped: updates no longer reach it."""
        nodes = self._nodes.get(display_id)
        if nodes is None:
            return
        nodes[:] = [kept for kept in nodes if kept is not node]
        if not nodes:
            del self._nodes[display_id]
