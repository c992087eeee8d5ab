"""run_notebook: cells, failures, parameters, timeouts, tags, kernels and working directories."""

from __future__ import annotations

import asyncio
import io
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import kernelexec as kx
from kernelexec._progress import BarProgress, LineProgress

pytestmark = pytest.mark.timeout(60)


def notebook(*sources: str, **metadata) -> nbformat.NotebookNode:
    return new_notebook(cells=[new_code_cell(s) for s in sources], metadata=metadata)


def texts(cell: nbformat.NotebookNode) -> list[str]:
    return [o.get("text") or o.get("data", {}).get("text/plain") or o.get("ename") for o in cell.outputs]


def test_cells_run_in_one_session_and_are_filled_as_nbclient_fills_them():
    nb = notebook("x = 20", "print('hi')\nx + 1")
    nb.cells.insert(1, new_markdown_cell("notes"))
    executed = kx.run_notebook(nb)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2]
    assert texts(code[1]) == ["hi\n", "21"]
    assert set(code[1].metadata.execution) == {
        "iopub.status.busy", "iopub.execute_input", "shell.execute_reply", "iopub.status.idle",
    }  # fmt: skip
    assert executed.metadata.language_info.name == "python"
    assert nb.cells[0].outputs == [] and nb.cells[0].execution_count is None  # the input is untouched
    nbformat.validate(executed)


def test_a_failing_cell_raises_with_its_index_and_plain_traceback_and_stops_the_run(tmp_path):
    out = tmp_path / "out.ipynb"
    nb = notebook("print('before')", "def f():\n    raise ValueError('bad value')\nf()", "print('never')")
    with pytest.raises(kx.CellExecutionError) as caught:
        kx.run_notebook(nb, output_path=out)
    error = caught.value
    assert (error.cell_index, error.ename, error.evalue) == (1, "ValueError", "bad value")
    assert "raise ValueError('bad value')" in error.traceback and "\x1b[" not in error.traceback
    assert isinstance(error, kx.KernelexecError) and "allow_errors=True" in str(error)
    written = nbformat.read(out, as_version=4)  # written even though a cell failed
    assert texts(written.cells[0]) == ["before\n"]
    assert written.cells[1].outputs[0].ename == "ValueError"
    assert written.cells[2].outputs == [] and written.cells[2].execution_count is None


def test_allow_errors_records_the_error_and_goes_on():
    executed = kx.run_notebook(notebook("1/0", "print('after')"), allow_errors=True)
    assert texts(executed.cells[0]) == ["ZeroDivisionError"]
    assert texts(executed.cells[1]) == ["after\n"]


def test_cell_tags_raises_exception_and_skip_execution_are_honoured():
    nb = notebook("raise KeyError('k')", "print('ran')", "print('skipped')")
    nb.cells[0].metadata.tags = ["raises-exception"]
    nb.cells[2].metadata.tags = ["skip-execution"]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="kept\n")]
    executed = kx.run_notebook(nb)
    assert texts(executed.cells[0]) == ["KeyError"]
    assert texts(executed.cells[1]) == ["ran\n"]
    assert texts(executed.cells[2]) == ["kept\n"] and executed.cells[2].execution_count is None


def test_parameters_are_injected_after_the_parameters_cell_and_win():
    nb = notebook("rate = 0.1\nname = 'default'", "print(rate, name)")
    nb.cells[0].metadata.tags = ["parameters"]
    executed = kx.run_notebook(nb, parameters={"rate": 0.5, "name": "tuned"})
    assert executed.cells[1].metadata.tags == ["injected-parameters"]
    assert texts(executed.cells[2]) == ["0.5 tuned\n"]
    assert [c.execution_count for c in executed.cells] == [1, 2, 3]


def test_a_cell_over_the_timeout_is_interrupted_and_the_state_kept():
    nb = notebook("x = 1", "import time\ntime.sleep(30)", "print(x)")
    with pytest.raises(kx.CellExecutionError) as caught:
        kx.run_notebook(nb, timeout=1)
    assert caught.value.cell_index == 1 and caught.value.ename == "TimeoutError"
    executed = kx.run_notebook(nb, timeout=1, allow_errors=True)
    assert texts(executed.cells[1]) == ["KeyboardInterrupt"]
    assert texts(executed.cells[2]) == ["1\n"]


def test_a_cell_that_ignores_the_interrupt_gets_a_fresh_kernel_and_an_error_output():
    ignore = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(30)"
    executed = kx.run_notebook(notebook(ignore, "print('fresh')"), timeout=1, allow_errors=True, interrupt_grace=0.5)
    (error,) = executed.cells[0].outputs
    assert error.ename == "TimeoutError" and "time limit" in error.evalue
    assert texts(executed.cells[1]) == ["fresh\n"]


def test_cwd_defaults_to_the_notebooks_folder(tmp_path):
    (tmp_path / "data.txt").write_text("from the folder")
    path = tmp_path / "nb.ipynb"
    nbformat.write(notebook("print(open('data.txt').read())"), path)
    assert texts(kx.run_notebook(path).cells[0]) == ["from the folder\n"]
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(kx.CellExecutionError, match="FileNotFoundError"):
        kx.run_notebook(path, cwd=other)


def test_the_notebooks_kernel_spec_is_used_unless_kernel_name_overrides_it():
    nb = notebook("1", kernelspec={"name": "no-such-kernel", "display_name": "X", "language": "python"})
    with pytest.raises(kx.KernelStartError, match="no-such-kernel"):
        kx.run_notebook(nb)
    assert texts(kx.run_notebook(nb, kernel_name="python3").cells[0]) == ["1"]


def test_display_updates_reach_earlier_cells():
    nb = notebook("h = display('first', display_id=True)", "h.update('second')")
    executed = kx.run_notebook(nb)
    assert texts(executed.cells[0]) == ["'second'"] and executed.cells[1].outputs == []


def test_progress_reports_each_cell():
    stream = io.StringIO()
    with pytest.raises(kx.CellExecutionError):
        kx.run_notebook(notebook("1", "", "1/0", "2"), progress=LineProgress(stream))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[0] == "running notebook: 3 code cells"
    assert lines[1].startswith("[1/3] cell 0: ok in ")
    assert lines[2].startswith("[2/3] cell 2: error: ZeroDivisionError: division by zero")


def test_async_run_notebook_runs_the_same_way():
    executed = asyncio.run(kx.async_run_notebook(notebook("a = 2", "a ** 10")))
    assert texts(executed.cells[1]) == ["1024"]


def test_a_missing_notebook_is_an_invalid_argument(tmp_path):
    with pytest.raises(kx.InvalidArgument, match="does not exist"):
        kx.run_notebook(tmp_path / "missing.ipynb")


def test_an_unwritable_output_path_fails_before_any_cell_runs(tmp_path):
    marker = tmp_path / "ran"
    nb = notebook(f"open({str(marker)!r}, 'w').close()")
    with pytest.raises(kx.InvalidArgument, match="output_path"):
        kx.run_notebook(nb, output_path=tmp_path / "missing" / "out.ipynb")
    assert not marker.exists()


NOT_NOTEBOOKS = {
    "README.md": b"# A title\n\nSome text.\n",
    "script.py": b"print('hello')\n",
    "empty.ipynb": b"",
    "other.json": b'{"a": 1}',
    "list.ipynb": b"[1, 2]",
    "random.ipynb": bytes(range(128, 256)) * 4,
}


@pytest.mark.parametrize("name", sorted(NOT_NOTEBOOKS))
def test_a_file_that_is_not_a_notebook_raises_invalid_notebook_saying_why(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(NOT_NOTEBOOKS[name])
    with pytest.raises(kx.InvalidNotebook) as caught:
        kx.run_notebook(path)
    message = str(caught.value)
    assert isinstance(caught.value, kx.KernelexecError) and repr(str(path)) in message
    assert "\n" not in message and ("not a notebook" in message or "not a valid notebook" in message)


def test_a_mapping_that_is_not_a_notebook_raises_invalid_notebook():
    with pytest.raises(kx.InvalidNotebook, match="no 'nbformat' or 'cells' key"):
        kx.run_notebook({"a": 1})


def test_sys_exit_0_ends_the_run_cleanly_without_ipythons_advice(tmp_path):
    out = tmp_path / "out.ipynb"
    executed = kx.run_notebook(notebook("print('before')", "import sys; sys.exit(0)", "print('never')"), output_path=out)
    assert executed.cells[1].outputs[0].ename == "SystemExit"
    assert executed.cells[2].outputs == [] and executed.cells[2].execution_count is None
    assert "To exit: use" not in str(executed.cells[1].outputs)  # IPython's terminal advice
    assert nbformat.read(out, as_version=4) == executed


@pytest.mark.parametrize("code", ["raise SystemExit", "import sys; sys.exit()", "raise SystemExit(None)"])
def test_every_successful_system_exit_ends_the_run(code):
    executed = kx.run_notebook(notebook(code, "print('never')"))
    assert executed.cells[1].execution_count is None


def test_a_non_zero_sys_exit_is_an_error():
    with pytest.raises(kx.CellExecutionError) as caught:
        kx.run_notebook(notebook("import sys; sys.exit(3)", "print('never')"))
    assert (caught.value.ename, caught.value.evalue) == ("SystemExit", "3")
    assert "To exit: use" not in caught.value.result.stderr


def test_a_cancelled_run_writes_the_running_cells_outputs_so_far(tmp_path):
    out = tmp_path / "out.ipynb"
    loop = "import time\nfor i in range(60):\n    print(i, flush=True)\n    time.sleep(0.5)"
    nb = notebook("print('done')", loop, "print('never')")

    async def main() -> None:
        printed = asyncio.Event()

        def on_output(node):  # a session option: run_notebook's own collection runs too
            if "2\n" in node.get("text", ""):
                printed.set()

        run = asyncio.create_task(kx.async_run_notebook(nb, output_path=out, on_output=on_output))
        await asyncio.wait_for(printed.wait(), 30)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(main())
    written = nbformat.read(out, as_version=4)
    assert texts(written.cells[0]) == ["done\n"]
    assert written.cells[1].outputs[0].text.startswith("0\n1\n2\n")
    assert written.cells[1].execution_count == 2 and written.cells[2].execution_count is None


def test_the_progress_bar_ticks_during_a_long_cell():
    stream = io.StringIO()
    kx.run_notebook(notebook("import time\ntime.sleep(4.5)"), progress=BarProgress(stream))
    # The elapsed time of each drawing of the bar while the cell ran (its postfix names the cell).
    drawn = re.findall(r"\[(\d\d):(\d\d)<[^\]]*cell 0:", stream.getvalue())
    seconds = {int(minutes) * 60 + int(secs) for minutes, secs in drawn}
    # Without ticks the bar is drawn as the cell starts and as it ends: two values, 4 s apart.
    assert len(seconds) >= 3, stream.getvalue()
