"""run_notebook's nbclient options, differentially: the same notebook through nbclient 0.11 and
through run_notebook with the same option, compared after nbclient's normalisation (nbcompare)."""

from __future__ import annotations

import asyncio
import math

import nbformat
import pytest
from nbcompare import differences
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from reference_tools import run_reference

import kernelexec as kx

pytestmark = pytest.mark.timeout(120)


def cell(source: str, *tags: str, **metadata) -> nbformat.NotebookNode:
    made = new_code_cell(source)  # metadata set after: new_code_cell validates it
    made.metadata.update({"tags": list(tags)} if tags else {}, **metadata)
    return made


def both(tmp_path, nb, nbclient_options: dict, **ours):
    """(nbclient's run, its error; our notebook, our CellExecutionError or None)."""
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    reference = run_reference("nbclient", str(path), str(tmp_path / "nbclient.ipynb"), **nbclient_options)
    try:
        executed, error = kx.run_notebook(path, **ours), None
    except kx.CellExecutionError as raised:
        executed, error = nbformat.read(tmp_path / "out.ipynb", as_version=4), raised
    return reference, executed, error


def test_the_cell_hooks_are_called_as_nbclients_are(tmp_path):
    nb = new_notebook(cells=[
        new_markdown_cell("# notes"), cell("x = 1"), cell(""), cell("print('skipped')", "skip-execution"),
        cell("1/0", "raises-exception"), cell("print(x)"),
    ])  # fmt: skip
    calls: list[tuple[str, int]] = []

    def hook(name):
        return lambda cell, cell_index, **more: calls.append((name, cell_index))

    async def async_hook(cell, cell_index, result):  # a hook may be a coroutine function
        await asyncio.sleep(0)
        calls.append(("on_cell_error", cell_index))

    names = ["on_cell_start", "on_cell_executed", "on_cell_error"]
    reference, executed, error = both(
        tmp_path, nb, {"hooks": names}, output_path=tmp_path / "out.ipynb",
        on_cell_start=hook("on_cell_start"), on_cell_executed=hook("on_cell_executed"),
        on_cell_error=async_hook,
    )  # fmt: skip
    assert error is None and reference.error is None
    assert calls == reference.hooks
    assert differences(reference.nb, executed) == []


def test_hooks_get_the_cell_and_its_result():
    seen = []
    kx.run_notebook(
        new_notebook(cells=[cell("6 * 7")]),
        on_cell_executed=lambda cell, cell_index, result: seen.append((cell.source, cell_index, result.result)),
    )
    assert seen == [("6 * 7", 0, "42")]


def test_skip_cells_with_tag_takes_another_tag(tmp_path):
    nb = new_notebook(cells=[cell("print('runs')", "skip-execution"), cell("print('not this')", "later")])
    reference, executed, _ = both(tmp_path, nb, {"skip_cells_with_tag": "later"}, skip_cells_with_tag="later")
    assert executed.cells[0].outputs[0].text == "runs\n" and executed.cells[1].outputs == []
    assert differences(reference.nb, executed) == []


@pytest.mark.parametrize(("allowed", "fails"), [(["KeyError"], False), (["ValueError"], True)])
def test_allow_error_names_lets_those_errors_pass(tmp_path, allowed, fails):
    nb = new_notebook(cells=[cell("{}['missing']"), cell("print('after')")])
    reference, executed, error = both(
        tmp_path, nb, {"allow_error_names": allowed}, allow_error_names=allowed, output_path=tmp_path / "out.ipynb"
    )
    assert (error is not None) == fails == (reference.error is not None)
    assert differences(reference.nb, executed) == []


def test_record_timing_false_writes_no_execution_metadata(tmp_path):
    nb = new_notebook(cells=[cell("1 + 1")])
    reference, executed, _ = both(tmp_path, nb, {"record_timing": False}, record_timing=False)
    assert "execution" not in reference.nb.cells[0].metadata
    assert "execution" not in executed.cells[0].metadata
    assert differences(reference.nb, executed) == []


def test_timeout_func_sets_each_cells_limit_as_nbclients_does(tmp_path):
    nb = new_notebook(cells=[cell("import time\ntime.sleep(2)\nprint('slow but allowed')"), cell("time.sleep(30)", "short")])
    limits = {"short": 1}
    reference, executed, error = both(
        tmp_path, nb, {"timeout_by_tag": limits}, output_path=tmp_path / "out.ipynb",
        timeout_func=lambda cell: next((limits[t] for t in cell.metadata.get("tags", []) if t in limits), None),
    )  # fmt: skip
    assert reference.error["type"] == "CellTimeoutError"  # nbclient fails the cell too, its own way
    assert error is not None and error.cell_index == 1 and error.ename == "TimeoutError"
    assert executed.cells[0].outputs[0].text == reference.nb.cells[0].outputs[0].text == "slow but allowed\n"


def test_a_cells_metadata_timeout_is_its_limit_and_survives_the_run():
    # A string, as nbformat's schema wants the values under metadata.execution.
    nb = new_notebook(cells=[cell("import time\ntime.sleep(30)", execution={"timeout": "1"}), cell("print('next')")])
    executed = kx.run_notebook(nb, allow_errors=True)
    assert executed.cells[0].outputs[-1].ename == "KeyboardInterrupt"  # interrupted at 1 s
    assert executed.cells[0].metadata.execution.timeout == "1"  # kept next to the timing
    assert "iopub.status.busy" in executed.cells[0].metadata.execution
    assert executed.cells[1].outputs[0].text == "next\n"


@pytest.mark.parametrize("value", ["soon", True, math.nan, "nan"])
def test_a_bad_metadata_timeout_fails_before_the_run(value):
    nb = new_notebook(cells=[cell("1")])
    nb.cells[0].metadata.execution = {"timeout": value}  # new_notebook would validate it
    with pytest.raises(kx.InvalidArgument, match="metadata.execution.timeout"):
        kx.run_notebook(nb)


@pytest.mark.parametrize(
    ("option", "value"),
    [("allow_error_names", "KeyError"), ("on_cell_start", "print"), ("autosave_cell_every", -1), ("skip_cells_with_tag", 3)],
)
def test_bad_options_fail_before_a_kernel_starts(option, value):
    with pytest.raises(kx.InvalidArgument, match=option):
        kx.run_notebook(new_notebook(cells=[cell("1")]), **{option: value})
