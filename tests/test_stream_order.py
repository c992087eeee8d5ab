"""stdout and stderr reach the result in the order the code wrote them, every time.

ipykernel sends each stream's buffer on a timer of its own, which is never cancelled: a timer set
before an explicit flush (the end of a cell, a traceback) fires later, in the middle of the next
cell's output. Right after a cell (or the kernel's first ``kernel_info_request``) that wrote to
stderr, a cell that prints, writes to stderr and raises got its stderr first in most runs. The
cases compared with nbclient run the same notebook through the real nbclient.
"""

from __future__ import annotations

import asyncio
import os

import nbformat
import pytest
from nbclient import NotebookClient

import kernelexec as kx

pytestmark = pytest.mark.timeout(120)

CONFORMANCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance", "nbclient")
RAISING = os.path.join(CONFORMANCE, "Skip Exceptions with Cell Tags.ipynb")
WRITES_STDERR = "import sys\nprint('earlier', file=sys.stderr)"
RUNS = 20


def kinds(outputs: list) -> list[tuple[str, str]]:
    return [(o.get("name", o["output_type"]), o.get("text", o.get("evalue", ""))) for o in outputs]


def through_nbclient(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(nb)
    # asyncio.run closes its loop; nbclient's execute() would leave one (and its socket pair) open
    asyncio.run(NotebookClient(nb, allow_errors=True, kernel_name="python3").async_execute())
    return nb


def raising_cell() -> nbformat.NotebookNode:
    cell = nbformat.read(RAISING, as_version=4).cells[0]  # an nbformat 4.4 cell: no id
    return nbformat.v4.new_code_cell(cell.source, metadata=cell.metadata)


EXPECTED = [("stdout", "hello\n"), ("stderr", "errorred\n"), ("error", "message")]


def test_a_raising_cell_keeps_its_order_after_a_cell_that_wrote_to_stderr(warm_session):
    code = raising_cell().source
    for run in range(RUNS):
        warm_session.execute(WRITES_STDERR)
        result = warm_session.execute(code)
        assert kinds(result.outputs) == EXPECTED, f"run {run}"


def test_run_notebook_keeps_the_order_of_every_raising_cell():
    nb = nbformat.v4.new_notebook()
    for _ in range(RUNS):
        nb.cells += [nbformat.v4.new_code_cell(WRITES_STDERR), raising_cell()]
    done = kx.run_notebook(nb)
    for index in range(1, len(done.cells), 2):
        assert kinds(done.cells[index].outputs) == EXPECTED, f"cell {index}"


def test_the_first_cell_of_a_fresh_kernel_matches_nbclient():
    """The kernel's first ``kernel_info`` writes debugpy's warning to stderr, whose timers were
    still pending when kernelexec's first cell ran."""
    expected = kinds(through_nbclient(nbformat.read(RAISING, as_version=4)).cells[0].outputs)
    assert expected == EXPECTED
    for run in range(3):
        done = kx.run_notebook(RAISING)
        assert kinds(done.cells[0].outputs) == expected, f"run {run}"


def test_interleaved_writes_are_grouped_per_flush_as_nbclient_shows_them(warm_session):
    code = "import sys\nprint('a'); print('b', file=sys.stderr); print('c')"
    expected = kinds(through_nbclient(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])).cells[0].outputs)
    assert expected == [("stdout", "a\nc\n"), ("stderr", "b\n")]
    for run in range(5):
        warm_session.execute(WRITES_STDERR)
        assert kinds(warm_session.execute(code).outputs) == expected, f"run {run}"


def test_stderr_written_first_comes_first(warm_session):
    """nbclient shows ``a`` first here when the cell ends within ipykernel's 0.2 s flush interval
    (the end of a cell flushes stdout, then stderr) and ``b`` first when it lasts longer;
    kernelexec keeps the order the code wrote them in, whatever the timing."""
    for code in (
        "import sys\nprint('b', file=sys.stderr); print('a')",
        "import logging\nprint('a', flush=True)\nlogging.warning('b')\nprint('c')",
    ):
        for run in range(5):
            warm_session.execute(WRITES_STDERR)
            outputs = kinds(warm_session.execute(code).outputs)
            if "logging" in code:
                assert outputs == [("stdout", "a\n"), ("stderr", "WARNING:root:b\n"), ("stdout", "c\n")], run
            else:
                assert outputs == [("stderr", "b\n"), ("stdout", "a\n")], run
