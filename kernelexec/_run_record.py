"""papermill's run record: when the run and each cell started and ended, and where it failed.

What papermill 2.7 writes, key for key (its ``NotebookExecutionManager`` and
``raise_for_execution_errors``):

- ``metadata.papermill`` of the notebook: ``parameters``, ``default_parameters`` and
  ``environment_variables`` (kept from an earlier run, else empty), ``input_path``,
  ``output_path``, ``start_time``, ``end_time``, ``duration`` (seconds) and ``exception``
  (``True`` once a cell failed, else ``None``). papermill's own ``version`` is not claimed.
- ``metadata.papermill`` of every cell, markdown too: ``status`` (``pending``, ``running``,
  ``completed``, ``failed``), ``start_time``, ``end_time``, ``duration``, ``exception``.
- When the run fails, two markdown cells tagged ``papermill-error-cell-tag``: a banner first,
  "An Exception was encountered at In [N]", and an anchor just before the failing cell. A new
  run removes those of an earlier one.

Times are ISO 8601 in UTC with an offset (``2024-05-01T10:00:00.123456+00:00``), as papermill's.
"""

from __future__ import annotations

import datetime
import nbformat
from nbformat import NotebookNode

ERROR_MARKER_TAG = "papermill-error-cell-tag"
_ERROR_STYLE = (
    'style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;"'
)
ERROR_MESSAGE_TEMPLATE = (
    f"<span {_ERROR_STYLE}>An Exception was encountered at "
    "'<a href=\"#papermill-error-cell\">In [%s]</a>'.</span>"
)
ERROR_ANCHOR_MSG = (
    f'<span id="papermill-error-cell" {_ERROR_STYLE}>'
    "Execution using papermill encountered an exception here and stopped:</span>"
)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class PapermillRecord:
    """Writes papermill's metadata into ``nb`` as the run goes (no I/O of its own)."""

    def __init__(self, nb: NotebookNode, input_path: str | None, output_path: str | None) -> None:
        self.nb = nb
        self._input_path = input_path
        self._output_path = output_path
        self._started: datetime.datetime | None = None
        self._cell_started: dict[int, datetime.datetime] = {}

    def notebook_started(self) -> None:
        self._started = _now()
        record = self.nb.metadata.setdefault("papermill", NotebookNode())
        record.update(
            input_path=self._input_path, output_path=self._output_path,
            start_time=self._started.isoformat(), end_time=None, duration=None, exception=None,
        )  # fmt: skip
        for cell in self.nb.cells:
            cell.metadata["papermill"] = NotebookNode(
                exception=None, start_time=None, end_time=None, duration=None, status="pending"
            )

    def cell_started(self, cell: NotebookNode) -> None:
        started = self._cell_started[id(cell)] = _now()
        cell.metadata.papermill.update(start_time=started.isoformat(), status="running", exception=False)

    def cell_failed(self, cell: NotebookNode) -> None:
        cell.metadata.papermill.update(exception=True, status="failed")
        self.nb.metadata.papermill["exception"] = True

    def cell_ended(self, cell: NotebookNode) -> None:
        ended = _now()
        record = cell.metadata.papermill
        record["end_time"] = ended.isoformat()
        started = self._cell_started.pop(id(cell), None)
        if started is not None:
            record["duration"] = (ended - started).total_seconds()
        if record["status"] != "failed":
            record["status"] = "completed"

    def notebook_ended(self) -> None:
        ended = _now()
        record = self.nb.metadata.papermill
        record["end_time"] = ended.isoformat()
        if self._started is not None:
            record["duration"] = (ended - self._started).total_seconds()


def start_record(nb: NotebookNode) -> None:
    """Before parameters are injected: a notebook papermill never ran gets its empty record, as
    papermill gives it when it reads the notebook (one it ran keeps its own), and no banners."""
    if "papermill" not in nb.metadata:
        nb.metadata["papermill"] = NotebookNode(
            default_parameters=NotebookNode(), parameters=NotebookNode(), environment_variables=NotebookNode()
        )
    remove_error_banners(nb)


def remove_error_banners(nb: NotebookNode) -> None:
    """Drop the error cells an earlier papermill (or kernelexec) run added."""
    nb.cells = [cell for cell in nb.cells if ERROR_MARKER_TAG not in cell.get("metadata", {}).get("tags", [])]


def add_error_banners(nb: NotebookNode, cell_index: int) -> None:
    """papermill's banner at the top and an anchor before the failing cell at ``cell_index``."""
    count = nb.cells[cell_index].get("execution_count")
    banner = _marker_cell(nb, ERROR_MESSAGE_TEMPLATE % count)
    nb.cells.insert(cell_index, _marker_cell(nb, ERROR_ANCHOR_MSG))
    nb.cells.insert(0, banner)


def _marker_cell(nb: NotebookNode, source: str) -> NotebookNode:
    cell = nbformat.v4.new_markdown_cell(source, metadata={"tags": [ERROR_MARKER_TAG]})
    if nb.get("nbformat_minor", 0) < 5:
        del cell["id"]  # cell ids exist from nbformat 4.5 on
    return cell

