"""run_notebook: every code cell of a notebook in one session, outputs written as nbclient writes them.

A run is planned first (read the notebook, inject parameters, pick the kernel and the working
directory), then executed cell by cell through an ``AsyncSession`` — the session's timeout
ladder bounds each cell — and the outputs, execution counts and timing go into the cells.
``run_notebook`` drives the same coroutine on kernelexec's loop thread.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nbformat
from nbformat import NotebookNode

from ._displays import DisplayRegistry
from ._errors import CellExecutionError, InvalidArgument
from ._options import with_options_signature
from ._parameters import cell_tags, inject_parameters
from ._progress import Progress, make_progress
from ._record import fill_code_cell, write_notebook
from ._session import AsyncSession, Session
from ._state import SessionHooks

# nbclient's cell tags.
SKIP_TAG = "skip-execution"
RAISES_TAG = "raises-exception"
# Notebooks keep their images and tables: a larger output budget per cell than a session's.
NOTEBOOK_MAX_OUTPUT_BYTES = 100_000_000

NotebookSource = NotebookNode | Mapping[str, Any] | str | os.PathLike[str]


@dataclass
class _Plan:
    """A notebook ready to run, and how to run it."""

    nb: NotebookNode
    name: str
    kernel_name: str
    cwd: str | None
    timeout: float
    allow_errors: bool
    output_path: str | None

    def cells_to_run(self) -> list[int]:
        """Indices of the code cells that run: not empty, not tagged ``skip-execution``."""
        return [
            index
            for index, cell in enumerate(self.nb.cells)
            if _runs(cell) and cell.source.strip()
        ]


def _runs(cell: NotebookNode) -> bool:
    """A code cell not tagged ``skip-execution``."""
    return cell.cell_type == "code" and SKIP_TAG not in cell_tags(cell)


@with_options_signature
def run_notebook(
    nb_or_path: NotebookSource,
    *,
    output_path: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    allow_errors: bool = False,
    parameters: Mapping[str, Any] | None = None,
    kernel_name: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    progress: bool | Progress = False,
    **session_options: Any,
) -> NotebookNode:
    """Execute every code cell of a notebook in one fresh session; return the executed notebook.

    >>> nb = kx.run_notebook("analysis.ipynb", output_path="analysis.out.ipynb", timeout=600)

    - ``nb_or_path``: a path or a notebook node (which is not changed: a copy is executed).
    - ``timeout``: seconds per cell (``None``: no limit), enforced by the session's ladder:
      interrupt, then restart if the kernel does not answer.
    - ``allow_errors``: record a failing cell's error and go on. Otherwise the first failing cell
      raises ``CellExecutionError`` (cell index, ename, evalue, plain traceback). A cell tagged
      ``raises-exception`` may fail either way; one tagged ``skip-execution`` does not run.
    - ``parameters``: injected papermill-style in a cell after the one tagged ``parameters``.
    - ``kernel_name``: default the notebook's kernel spec; ``cwd``: default the notebook's folder.
    - ``output_path``: where the executed notebook is written, also when a cell fails (with the
      outputs up to the failure).
    - ``progress``: ``True`` shows a bar on a terminal and plain lines otherwise (on stderr), or
      pass a ``Progress`` of your own.
    - Other keyword arguments are ``Session`` options (``env``, ``interrupt_grace``, ...).
    """
    plan = _plan(nb_or_path, output_path, timeout, allow_errors, parameters, kernel_name, cwd)
    session = Session(plan.kernel_name, _hooks=_notebook_hooks(), **_session_options(plan, session_options))
    try:
        return session.run(_run(session.async_session, plan, make_progress(progress)))
    finally:
        session.shutdown()


@with_options_signature
async def async_run_notebook(
    nb_or_path: NotebookSource,
    *,
    output_path: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    allow_errors: bool = False,
    parameters: Mapping[str, Any] | None = None,
    kernel_name: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    progress: bool | Progress = False,
    **session_options: Any,
) -> NotebookNode:
    """``run_notebook`` for asyncio code: the same arguments, awaited."""
    plan = _plan(nb_or_path, output_path, timeout, allow_errors, parameters, kernel_name, cwd)
    session = AsyncSession(plan.kernel_name, _hooks=_notebook_hooks(), **_session_options(plan, session_options))
    try:
        return await _run(session, plan, make_progress(progress))
    finally:
        await session.shutdown()


def _notebook_hooks() -> SessionHooks:
    """Display updates reach earlier cells, as in a notebook front end."""
    return SessionHooks(displays=DisplayRegistry())


def _session_options(plan: _Plan, options: dict[str, Any]) -> dict[str, Any]:
    return {"max_output_bytes": NOTEBOOK_MAX_OUTPUT_BYTES, **options, "timeout": plan.timeout, "cwd": plan.cwd}


async def _run(session: AsyncSession, plan: _Plan, progress: Progress) -> NotebookNode:
    """Run the plan's cells in ``session``; the output notebook is written however it ends."""
    to_run = plan.cells_to_run()
    progress.start(plan.name, len(to_run))
    try:
        await session.start()
        language_info = session.language_info
        if language_info:
            plan.nb.metadata["language_info"] = copy.deepcopy(language_info)
        for number, index in enumerate(to_run, start=1):
            await _run_cell(session, plan, index, number, progress)
        return plan.nb
    finally:
        progress.close()
        if plan.output_path is not None:
            write_notebook(plan.nb, plan.output_path)


async def _run_cell(session: AsyncSession, plan: _Plan, index: int, number: int, progress: Progress) -> None:
    """Run one cell and fill it as nbclient does; raise if it failed and may not."""
    cell = plan.nb.cells[index]
    progress.cell_started(index, cell.source)
    result = await session.execute(cell.source)
    # nbclient numbers cells by how many it has run, which is the kernel's count in one session.
    fill_code_cell(cell, result, number)
    progress.cell_finished(index, result)
    if not result.ok and not plan.allow_errors and RAISES_TAG not in cell_tags(cell):
        raise CellExecutionError(result, index)


def _plan(
    nb_or_path: NotebookSource,
    output_path: str | os.PathLike[str] | None,
    timeout: float | None,
    allow_errors: bool,
    parameters: Mapping[str, Any] | None,
    kernel_name: str | None,
    cwd: str | os.PathLike[str] | None,
) -> _Plan:
    nb, folder, name = _read(nb_or_path)
    if output_path is not None:  # a bad path must fail before the cells run, not after
        where = os.path.dirname(os.path.abspath(os.fspath(output_path)))
        if not os.path.isdir(where) or not os.access(where, os.W_OK):
            raise InvalidArgument(
                f"cannot write output_path {os.fspath(output_path)!r}: {where!r} is not a writable "
                "directory"
            )
    if parameters:
        _check_python(nb, kernel_name)
        inject_parameters(nb, parameters)
    for cell in nb.cells:  # outputs from an earlier run must not pass for this run's
        if _runs(cell):
            cell.outputs, cell.execution_count = [], None
    spec_name = nb.metadata.get("kernelspec", {}).get("name")
    return _Plan(
        nb=nb,
        name=name,
        kernel_name=kernel_name or spec_name or "python3",
        cwd=os.fspath(cwd) if cwd is not None else folder,
        timeout=math.inf if timeout is None else timeout,
        allow_errors=allow_errors,
        output_path=os.fspath(output_path) if output_path is not None else None,
    )


def _read(nb_or_path: NotebookSource) -> tuple[NotebookNode, str | None, str]:
    """A private v4 copy of the notebook, its folder (for a path) and a name to show."""
    if isinstance(nb_or_path, (str, os.PathLike)):
        path = os.fspath(nb_or_path)
        if not os.path.isfile(path):
            raise InvalidArgument(f"notebook {path!r} does not exist (or is not a file)")
        nb = nbformat.read(path, as_version=4)
        return nb, os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if not isinstance(nb_or_path, Mapping) or "cells" not in nb_or_path:
        raise InvalidArgument(
            f"run_notebook takes a notebook node or a path, not {type(nb_or_path).__name__}"
        )
    nb = nbformat.from_dict(copy.deepcopy(dict(nb_or_path)))
    if nb.get("nbformat", 4) != 4:
        nb = nbformat.convert(nb, 4)
    return nb, None, "notebook"


def _check_python(nb: NotebookNode, kernel_name: str | None) -> None:
    language = nb.metadata.get("kernelspec", {}).get("language") or nb.metadata.get(
        "language_info", {}
    ).get("name", "python")
    if language != "python" and kernel_name is None:
        raise InvalidArgument(
            f"parameters can be injected into Python notebooks only; this one is {language!r}"
        )

