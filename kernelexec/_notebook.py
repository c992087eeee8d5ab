"""run_notebook: every code cell of a notebook in one session, outputs written as nbclient writes them.

A run is planned first (read the notebook, check the options, inject parameters, pick the kernel
and the working directory), then executed cell by cell through an ``AsyncSession``
(``_notebook_run``). ``run_notebook`` drives the same coroutine on kernelexec's loop thread.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from nbformat import NotebookNode

from ._displays import DisplayRegistry
from ._errors import InvalidArgument
from ._notebook_io import notebook_from_mapping, read_notebook_file
from ._notebook_run import execute_plan
from ._options import with_options_signature
from ._parameters import cell_tags, inject_parameters
from ._progress import Progress, make_progress
from ._result import ExecutionResult
from ._run_record import start_record
from ._session import AsyncSession, Session
from ._state import SessionHooks

# nbclient's cell tags.
SKIP_TAG = "skip-execution"
RAISES_TAG = "raises-exception"
# Notebooks keep their images and tables: a larger output budget per cell than a session's.
NOTEBOOK_MAX_OUTPUT_BYTES = 100_000_000

NotebookSource = NotebookNode | Mapping[str, Any] | str | os.PathLike[str]
TimeoutFunc = Callable[[NotebookNode], "float | None"]
CellHook = Callable[..., Any]  # called with keywords; may return an awaitable


@dataclass(frozen=True)
class RunOptions:
    """How a notebook runs: ``run_notebook``'s arguments, bar the notebook, progress and the
    session's options. Checked on construction, before any kernel starts."""

    output_path: str | None = None
    timeout: float | None = None
    allow_errors: bool = False
    parameters: Mapping[str, Any] | None = None
    kernel_name: str | None = None
    cwd: str | None = None
    timeout_func: TimeoutFunc | None = None
    skip_cells_with_tag: str = SKIP_TAG
    allow_error_names: Collection[str] = ()
    on_cell_start: CellHook | None = None
    on_cell_executed: CellHook | None = None
    on_cell_error: CellHook | None = None
    record_timing: bool = True
    record_papermill: bool = False
    autosave_cell_every: float = 30.0

    def __post_init__(self) -> None:
        for name in ("timeout_func", "on_cell_start", "on_cell_executed", "on_cell_error"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise InvalidArgument(f"{name} must be callable or None, not {value!r}")
        names = self.allow_error_names
        if isinstance(names, str) or not all(isinstance(name, str) for name in names):
            raise InvalidArgument(
                f"allow_error_names must be a list of exception names such as ['KeyError'], not {names!r}"
            )
        object.__setattr__(self, "allow_error_names", tuple(names))
        if not isinstance(self.skip_cells_with_tag, str):
            raise InvalidArgument(f"skip_cells_with_tag must be a tag (a str), not {self.skip_cells_with_tag!r}")
        every = self.autosave_cell_every
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every >= 0:
            raise InvalidArgument(f"autosave_cell_every must be a number of seconds >= 0, not {every!r}")
        if self.output_path is not None:  # a bad path must fail before the cells run, not after
            where = os.path.dirname(os.path.abspath(self.output_path))
            if not os.path.isdir(where) or not os.access(where, os.W_OK):
                raise InvalidArgument(
                    f"cannot write output_path {self.output_path!r}: {where!r} is not a writable directory"
                )


@dataclass
class Plan:
    """A notebook ready to run, and how to run it."""

    nb: NotebookNode
    name: str
    input_path: str | None
    kernel_name: str
    cwd: str | None
    options: RunOptions

    def runs(self, cell: NotebookNode) -> bool:
        """A code cell not tagged to be skipped (it may still be empty)."""
        return cell.cell_type == "code" and self.options.skip_cells_with_tag not in cell_tags(cell)

    def cells_to_run(self) -> list[int]:
        """Indices of the code cells that run: not empty, not tagged to be skipped."""
        return [index for index, cell in enumerate(self.nb.cells) if self.runs(cell) and cell.source.strip()]

    def cell_timeout(self, cell: NotebookNode) -> float:
        """The cell's time limit: ``timeout_func(cell)`` if given, else the cell's
        ``metadata.execution.timeout``, else ``timeout``; ``None``, 0 or less: no limit."""
        if self.options.timeout_func is not None:
            seconds = self.options.timeout_func(cell)
            where = "timeout_func's value"
        else:
            seconds = cell.metadata.get("execution", {}).get("timeout", self.options.timeout)
            where = "metadata.execution.timeout"
        return _limit(seconds, where)

    def may_fail(self, cell: NotebookNode, result: ExecutionResult) -> bool:
        """A failing cell the run goes on after (``allow_errors``, its tag or its error's name)."""
        return (
            self.options.allow_errors
            or RAISES_TAG in cell_tags(cell)
            or (result.error is not None and result.error.ename in self.options.allow_error_names)
        )


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
    timeout_func: TimeoutFunc | None = None,
    skip_cells_with_tag: str = SKIP_TAG,
    allow_error_names: Collection[str] = (),
    on_cell_start: CellHook | None = None,
    on_cell_executed: CellHook | None = None,
    on_cell_error: CellHook | None = None,
    record_timing: bool = True,
    record_papermill: bool = False,
    autosave_cell_every: float = 30.0,
    **session_options: Any,
) -> NotebookNode:
    """Execute every code cell of a notebook in one fresh session; return the executed notebook.

    >>> nb = kx.run_notebook("analysis.ipynb", output_path="analysis.out.ipynb", timeout=600)

    - ``nb_or_path``: a path or a notebook node (which is not changed: a copy is executed). What
      is not a notebook raises ``InvalidNotebook`` saying why.
    - ``timeout``: seconds per cell (``None``: no limit), enforced by the session's ladder:
      interrupt, then restart if the kernel does not answer. A cell's own
      ``metadata.execution.timeout`` (seconds, as a string to suit nbformat's schema, or a
      number) wins, and ``timeout_func(cell)`` (nbclient's) wins over both; ``None``, 0 or less
      from either means no limit for that cell.
    - ``allow_errors``: record a failing cell's error and go on. Otherwise the first failing cell
      raises ``CellExecutionError`` (cell index, ename, evalue, plain traceback), unless it is
      tagged ``raises-exception`` or its error is named in ``allow_error_names``. A cell tagged
      ``skip_cells_with_tag`` (default ``skip-execution``) does not run. ``SystemExit`` with no
      status or 0 ends the run there without an error, as under papermill.
    - ``parameters``: injected papermill-style in a cell after the one tagged ``parameters``.
    - ``kernel_name``: default the notebook's kernel spec; ``cwd``: default the notebook's folder.
    - ``output_path``: where the executed notebook is written: as the run begins, after every
      cell, every ``autosave_cell_every`` seconds during a long cell (0: not during a cell), and
      at the end however the run ends (a failing cell, Ctrl-C: with the outputs so far).
    - Hooks, as nbclient's: ``on_cell_start(cell=, cell_index=)`` before every cell (also those
      that do not run); ``on_cell_executed(cell=, cell_index=, result=)`` after a code cell ran;
      ``on_cell_error(cell=, cell_index=, result=)`` when it did not succeed. A hook may be async.
    - ``record_timing``: nbclient's kernel timestamps in each cell's ``metadata.execution``.
      ``record_papermill``: papermill's run record in ``metadata.papermill`` (notebook and cells)
      and its error banner cells when a cell fails.
    - ``progress``: ``True`` shows a bar on a terminal and plain lines otherwise (on stderr), or
      pass a ``Progress`` of your own.
    - Other keyword arguments are ``Session`` options (``env``, ``interrupt_grace``, ...).
    """
    plan = _plan(nb_or_path, RunOptions(
        output_path=_path(output_path), timeout=timeout, allow_errors=allow_errors,
        parameters=parameters, kernel_name=kernel_name, cwd=_path(cwd), timeout_func=timeout_func,
        skip_cells_with_tag=skip_cells_with_tag, allow_error_names=allow_error_names,
        on_cell_start=on_cell_start, on_cell_executed=on_cell_executed, on_cell_error=on_cell_error,
        record_timing=record_timing, record_papermill=record_papermill,
        autosave_cell_every=autosave_cell_every,
    ))  # fmt: skip
    session = Session(plan.kernel_name, _hooks=_notebook_hooks(), **_session_options(plan, session_options))
    try:
        return session.run(execute_plan(session.async_session, plan, make_progress(progress)))
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
    timeout_func: TimeoutFunc | None = None,
    skip_cells_with_tag: str = SKIP_TAG,
    allow_error_names: Collection[str] = (),
    on_cell_start: CellHook | None = None,
    on_cell_executed: CellHook | None = None,
    on_cell_error: CellHook | None = None,
    record_timing: bool = True,
    record_papermill: bool = False,
    autosave_cell_every: float = 30.0,
    **session_options: Any,
) -> NotebookNode:
    """``run_notebook`` for asyncio code: the same arguments, awaited."""
    plan = _plan(nb_or_path, RunOptions(
        output_path=_path(output_path), timeout=timeout, allow_errors=allow_errors,
        parameters=parameters, kernel_name=kernel_name, cwd=_path(cwd), timeout_func=timeout_func,
        skip_cells_with_tag=skip_cells_with_tag, allow_error_names=allow_error_names,
        on_cell_start=on_cell_start, on_cell_executed=on_cell_executed, on_cell_error=on_cell_error,
        record_timing=record_timing, record_papermill=record_papermill,
        autosave_cell_every=autosave_cell_every,
    ))  # fmt: skip
    session = AsyncSession(plan.kernel_name, _hooks=_notebook_hooks(), **_session_options(plan, session_options))
    try:
        return await execute_plan(session, plan, make_progress(progress))
    finally:
        await session.shutdown()


def _notebook_hooks() -> SessionHooks:
    """Display updates reach earlier cells, as in a notebook front end."""
    return SessionHooks(displays=DisplayRegistry())


def _path(path: str | os.PathLike[str] | None) -> str | None:
    return os.fspath(path) if path is not None else None


def _session_options(plan: Plan, options: dict[str, Any]) -> dict[str, Any]:
    timeout = plan.options.timeout
    return {
        "max_output_bytes": NOTEBOOK_MAX_OUTPUT_BYTES,
        **options,
        "timeout": math.inf if timeout is None else timeout,
        "cwd": plan.cwd,
    }


def _plan(nb_or_path: NotebookSource, options: RunOptions) -> Plan:
    nb, folder, name, input_path = _read(nb_or_path)
    if options.record_papermill:
        start_record(nb)
    if options.parameters:
        _check_python(nb, options.kernel_name)
        inject_parameters(nb, options.parameters)
    spec_name = nb.metadata.get("kernelspec", {}).get("name")
    plan = Plan(
        nb=nb,
        name=name,
        input_path=input_path,
        kernel_name=options.kernel_name or spec_name or "python3",
        cwd=options.cwd if options.cwd is not None else folder,
        options=options,
    )
    for cell in nb.cells:
        if plan.runs(cell):
            cell.outputs, cell.execution_count = [], None  # an earlier run's must not pass for this one's
            if options.timeout_func is None:
                plan.cell_timeout(cell)  # a bad metadata.execution.timeout fails before the run
    return plan


def _read(nb_or_path: NotebookSource) -> tuple[NotebookNode, str | None, str, str | None]:
    """A private v4 copy of the notebook, its folder and path (for a path), a name to show."""
    if isinstance(nb_or_path, (str, os.PathLike)):
        path = os.fspath(nb_or_path)
        nb = read_notebook_file(path)
        return nb, os.path.dirname(os.path.abspath(path)), os.path.basename(path), path
    if not isinstance(nb_or_path, Mapping):
        raise InvalidArgument(
            f"run_notebook takes a notebook node or a path, not {type(nb_or_path).__name__}"
        )
    return notebook_from_mapping(nb_or_path, "the notebook given"), None, "notebook", None


def _limit(seconds: object, where: str) -> float:
    """A cell's time limit as the session takes it: ``math.inf`` for none. A string of a number
    counts (nbformat's schema wants the values under ``metadata.execution`` to be strings)."""
    if seconds is None:
        return math.inf
    if isinstance(seconds, str):
        try:
            seconds = float(seconds)
        except ValueError:
            pass
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or math.isnan(seconds):
        raise InvalidArgument(f"{where} must be a number of seconds or None, not {seconds!r}")
    return float(seconds) if seconds > 0 else math.inf


def _check_python(nb: NotebookNode, kernel_name: str | None) -> None:
    language = nb.metadata.get("kernelspec", {}).get("language") or nb.metadata.get(
        "language_info", {}
    ).get("name", "python")
    if language != "python" and kernel_name is None:
        raise InvalidArgument(
            f"parameters can be injected into Python notebooks only; this one is {language!r}"
        )
