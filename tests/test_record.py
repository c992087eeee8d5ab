"""Sessions recorded as notebooks, and re-run with run_notebook to the same results."""

from __future__ import annotations

import asyncio

import nbformat
import pytest
from nbcompare import differences

import kernelexec as kx

pytestmark = pytest.mark.timeout(60)

CALLS = [
    "import math\nx = math.sqrt(16)",
    "print('x is', x)\nx * 2",
    "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))",
    "import sys\nprint('warn', file=sys.stderr)",
    "undefined_name",
    "x + 1",
]


def test_a_session_is_recorded_as_a_valid_notebook_one_cell_per_call(tmp_path):
    with kx.Session(timeout=30) as s:
        for code in CALLS:
            s.execute(code)
        nb = s.notebook
    nbformat.validate(nb)
    assert [c.source for c in nb.cells] == CALLS
    assert [c.execution_count for c in nb.cells] == [1, 2, 3, 4, 5, 6]
    assert nb.cells[1].outputs[0].text == "x is 4.0\n" and nb.cells[1].outputs[1].data["text/plain"] == "8.0"
    assert nb.cells[2].outputs[0].data["text/html"] == "<b>bold</b>"
    assert nb.cells[4].outputs[0].ename == "NameError"
    assert nb.cells[4].metadata.kernelexec.status == "error" and nb.cells[5].metadata.kernelexec.status == "ok"
    assert set(nb.cells[0].metadata.execution) == {
        "iopub.status.busy", "iopub.execute_input", "shell.execute_reply", "iopub.status.idle",
    }  # fmt: skip
    assert nb.metadata.kernelspec.name == "python3" and nb.metadata.language_info.name == "python"
    # The recording re-runs to the same outputs and execution counts.
    rerun = kx.run_notebook(nb, allow_errors=True, cwd=tmp_path)
    assert differences(nb, rerun) == []


def test_save_notebook_writes_the_recording_after_shutdown(tmp_path):
    path = tmp_path / "session.ipynb"
    with kx.Session(timeout=30) as s:
        s.execute("print(6 * 7)")
    s.save_notebook(path)
    saved = nbformat.read(path, as_version=4)
    nbformat.validate(saved)
    assert saved.cells[0].outputs[0].text == "42\n"


def test_a_call_ended_by_a_restart_is_recorded_with_an_error_output():
    with kx.Session(timeout=1, interrupt_grace=0.5) as s:
        s.execute("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(30)")
        nb = s.notebook
    (cell,) = nb.cells
    assert cell.metadata.kernelexec.status == "timeout" and cell.metadata.kernelexec.restarted
    assert cell.outputs[-1].output_type == "error" and cell.outputs[-1].ename == "TimeoutError"
    nbformat.validate(nb)


def test_an_error_the_kernel_answered_is_recorded_with_only_what_the_kernel_sent():
    with kx.Session(timeout=30) as s:
        result = s.execute("%undefined-line-magic")
        nb = s.notebook
    assert result.status == "error" and result.error.ename == "UsageError"
    (output,) = nb.cells[0].outputs  # the kernel's stderr line, no error output made up
    assert output.name == "stderr" and "UsageError" in output.text


def test_the_notebook_is_a_copy_that_changes_nothing_in_the_history():
    with kx.Session(timeout=30) as s:
        s.execute("print('a')")
        s.notebook.cells[0].outputs[0].text = "changed"
        assert s.notebook.cells[0].outputs[0].text == "a\n"
        assert s.history[0][1].stdout == "a\n"


def test_async_session_records_and_saves_the_same_way(tmp_path):
    async def main():
        async with kx.AsyncSession(timeout=30) as s:
            await s.execute("1 + 1")
            s.save_notebook(tmp_path / "a.ipynb")
            return s.notebook

    nb = asyncio.run(main())
    assert nb.cells[0].outputs[0].data["text/plain"] == "2"
    assert nbformat.read(tmp_path / "a.ipynb", as_version=4) == nb
