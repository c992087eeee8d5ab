"""Executing a planned notebook: cell by cell through an ``AsyncSession``, saved as it goes.

Every cell gets the session's timeout ladder. The running cell's outputs are mirrored as they
arrive (``LiveOutputs``), so that whatever ends the run — a failing cell, Ctrl-C, a signal the
command line turned into an interrupt — the notebook is written with everything the kernel sent,
the running cell's outputs included, in a ``finally``.
"""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any

from nbformat import NotebookNode

from ._errors import CellExecutionError
from ._live import LiveOutputs
from ._notebook_io import Autosaver
from ._progress import Progress
from ._record import fill_code_cell, is_clean_exit
from ._result import ExecutionResult
from ._run_record import PapermillRecord, add_error_banners
from ._session import AsyncSession

if TYPE_CHECKING:
    from ._notebook import CellHook, Plan


async def execute_plan(session: AsyncSession, plan: Plan, progress: Progress) -> NotebookNode:
    """Run the plan's cells in ``session``; the output notebook is written however it ends."""
    return await _Run(session, plan, progress).run()


async def _call_hook(hook: CellHook | None, **arguments: Any) -> None:
    """Call a user's hook with keywords, as nbclient does; await what it returns if awaitable."""
    if hook is not None:
        returned = hook(**arguments)
        if inspect.isawaitable(returned):
            await returned


class _Run:
    """One run of a plan: the session, what reports progress, and what saves the notebook."""

    def __init__(self, session: AsyncSession, plan: Plan, progress: Progress) -> None:
        self.session = session
        self.plan = plan
        self.options = plan.options
        self.progress = progress
        self.saver = Autosaver(plan.nb, self.options.output_path, self.options.autosave_cell_every)
        self.record = (
            PapermillRecord(plan.nb, plan.input_path, self.options.output_path)
            if self.options.record_papermill
            else None
        )

    async def run(self) -> NotebookNode:
        nb = self.plan.nb
        to_run = self.plan.cells_to_run()
        self.progress.start(self.plan.name, len(to_run))
        if self.record is not None:
            self.record.notebook_started()
        try:
            self.saver.save()
            await self.session.start()
            language_info = self.session.language_info
            if language_info:
                nb.metadata["language_info"] = copy.deepcopy(language_info)
            await self._run_cells(set(to_run))
            return nb
        except CellExecutionError as error:
            if self.record is not None:
                add_error_banners(nb, error.cell_index)
            raise
        finally:
            self.saver.cancel()
            self.progress.close()
            if self.record is not None:
                self.record.notebook_ended()
            self.saver.save(final=True)

    async def _run_cells(self, to_run: set[int]) -> None:
        """Every cell in order (hooks and the record see them all); the code cells run."""
        record = self.record
        number = 0  # nbclient numbers cells by how many ran: the kernel's count in one session
        for index, cell in enumerate(list(self.plan.nb.cells)):
            await _call_hook(self.options.on_cell_start, cell=cell, cell_index=index)
            if record is not None:
                record.cell_started(cell)
            ended_the_run = False
            try:
                if index in to_run:
                    number += 1
                    ended_the_run = is_clean_exit(await self._run_cell(index, cell, number))
                    if ended_the_run and record is not None:
                        record.cell_failed(cell)  # as papermill marks a cell that raised SystemExit
            except BaseException:  # a failing cell, or the run interrupted during it
                if record is not None:
                    record.cell_failed(cell)
                raise
            finally:
                if record is not None:
                    record.cell_ended(cell)
            if index in to_run:
                self.saver.save()
            if ended_the_run:
                return

    async def _run_cell(self, index: int, cell: NotebookNode, number: int) -> ExecutionResult:
        """Run one cell and fill it as nbclient does; raise if it failed and may not."""
        self.progress.cell_started(index, cell.source)
        live = LiveOutputs(self.session.options.max_output_bytes)
        callback = self.session.options.on_output

        def on_output(node: NotebookNode) -> None:
            live.add(node)
            self.saver.touch()
            if callback is not None:
                callback(node)

        def show_outputs_so_far() -> None:
            cell.outputs, cell.execution_count = live.outputs(), number

        self.saver.refresh = show_outputs_so_far
        self.saver.touch()  # a long, quiet cell is saved as running too
        try:
            result = await self.session.execute(
                cell.source, timeout=self.plan.cell_timeout(cell), on_output=on_output
            )
        except BaseException:  # interrupted: keep what the kernel sent so far
            show_outputs_so_far()
            raise
        finally:
            self.saver.refresh = None
            self.saver.cancel()
        fill_code_cell(cell, result, number, record_timing=self.options.record_timing)
        self.progress.cell_finished(index, result)
        await _call_hook(self.options.on_cell_executed, cell=cell, cell_index=index, result=result)
        if not result.ok:
            await _call_hook(self.options.on_cell_error, cell=cell, cell_index=index, result=result)
            if not is_clean_exit(result) and not self.plan.may_fail(cell, result):
                raise CellExecutionError(result, index)
        return result
