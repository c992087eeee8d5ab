"""Results as notebook cells: a session's history recorded as an nbformat v4 notebook.

The same cell-filling serves ``run_notebook``, so a recorded session and an executed notebook
hold their outputs, execution counts and timing the same way.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbformat import NotebookNode

from ._result import ExecutionResult


def cell_outputs(result: ExecutionResult) -> list[NotebookNode]:
    """The outputs a cell shows for ``result``.

    When the call ended without the kernel's own word on it (the kernel died, a timeout, an
    interrupt before the code ran) and no error output arrived, an error output saying so is
    added, so the notebook shows why the cell stopped. A call the kernel answered with an
    error (status ``"error"``) shows what the kernel sent and nothing more: a line magic's
    ``UsageError``, for one, is a line on stderr, as under nbclient.
    """
    outputs = list(result.outputs)
    error = result.error
    if (
        result.status != "error"
        and error is not None
        and not any(output.output_type == "error" for output in outputs)
    ):
        outputs.append(
            nbformat.v4.new_output(
                "error", ename=error.ename, evalue=error.evalue, traceback=list(error.traceback)
            )
        )
    return outputs


def is_clean_exit(result: ExecutionResult) -> bool:
    """The code raised ``SystemExit`` with a status Python counts as success (none, 0, None)."""
    error = result.error
    return (
        result.status == "error"
        and error is not None
        and error.ename == "SystemExit"
        and error.evalue in ("", "0", "None")
    )


def status_metadata(result: ExecutionResult) -> dict[str, Any]:
    """What kernelexec records about a call in its cell's ``metadata.kernelexec``."""
    return {
        "status": result.status,
        "exec_time": round(result.exec_time, 6),
        "restarted": result.restarted,
        "truncated_bytes": result.truncated_bytes,
    }


def session_notebook(
    history: Iterable[tuple[str, ExecutionResult]], kernel_name: str, kernel_info: dict[str, Any]
) -> NotebookNode:
    """One code cell per call: source, outputs, execution count, timing and status metadata."""
    nb = nbformat.v4.new_notebook(metadata=notebook_metadata(kernel_name, kernel_info))
    for number, (code, result) in enumerate(history, start=1):
        cell = nbformat.v4.new_code_cell(source=code)
        fill_code_cell(cell, result, result.execution_count)
        cell.outputs = copy.deepcopy(cell.outputs)  # the history keeps its own
        cell.metadata["kernelexec"] = status_metadata(result)
        cell.id = f"call-{number}"  # stable: recording the same history twice gives the same notebook
        nb.cells.append(cell)
    return nb


def fill_code_cell(
    cell: NotebookNode, result: ExecutionResult, execution_count: int | None, *, record_timing: bool = True
) -> None:
    """Give a code cell a call's outputs, execution count and timing, as nbclient writes them.

    The timing replaces the cell's ``metadata.execution``, except its ``timeout`` (the cell's
    own time limit, which a later run reads again).
    """
    cell.execution_count = execution_count
    cell.outputs = cell_outputs(result)
    if record_timing:
        kept = {k: v for k, v in cell.metadata.get("execution", {}).items() if k == "timeout"}
        cell.metadata["execution"] = {**kept, **result.timing}


def notebook_metadata(kernel_name: str, kernel_info: dict[str, Any]) -> dict[str, Any]:
    """``kernelspec`` and ``language_info`` as Jupyter writes them."""
    language_info = copy.deepcopy(kernel_info.get("language_info", {}))
    language = language_info.get("name", "")
    display_name = kernel_name
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
        display_name, language = spec.display_name, spec.language or language
    except NoSuchKernel:  # a kernel not installed here (a gateway's): keep what the kernel said
        pass
    metadata: dict[str, Any] = {
        "kernelspec": {"name": kernel_name, "display_name": display_name, "language": language}
    }
    if language_info:
        metadata["language_info"] = language_info
    return metadata


def write_notebook(nb: NotebookNode, path: str | os.PathLike[str]) -> None:
    """Write ``nb`` to ``path`` as nbformat v4 JSON."""
    with open(path, "w", encoding="utf-8") as file:
        nbformat.write(nb, file)
