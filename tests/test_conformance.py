"""nbclient's own test notebooks, executed by run_notebook, must reproduce their stored outputs.

The notebooks and the options each runs with come from nbclient's test suite (see
conformance/README.md; the notebooks are vendored under nbclient's BSD licence); outputs are compared after nbclient's normalisation (nbcompare.py).

Left out of the stored-output comparison, and why:

- ``JupyterWidgets.ipynb``, ``Output.ipynb``: need ipywidgets in the kernel's environment (not a
  dependency of kernelexec) and nbclient's widget-state machinery, which kernelexec does not have.
- ``Error.ipynb``: its stored traceback comes from an older ipykernel (a temporary-file cell name,
  different source text); nbclient's comparison does not use it either. It is run below as an error
  test: it must raise ``CellExecutionError`` with ZeroDivisionError.
- ``Autokill.ipynb``, ``Disable Stdin.ipynb``: no stored outputs; nbclient uses them for kernel death
  and disabled stdin. Run below as failure tests.
- ``Sleep1s.ipynb``, ``Parallel Execute A/B.ipynb``: no stored outputs; nbclient uses them for timing
  and parallel runs (B waits for a file A writes), which compare nothing.
"""

from __future__ import annotations

import os
import shutil

import nbformat
import pytest
from nbcompare import cleaned, differences
from reference_tools import run_reference

import kernelexec as kx

pytestmark = pytest.mark.timeout(60)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance", "nbclient")
PAPERMILL = os.path.join(os.path.dirname(SOURCE), "papermill")
TERMINAL = {"COLUMNS": "80", "LINES": "24"}  # as nbclient's tests run them: stable tracebacks

COMPARED = {
    "Other Comms.ipynb": {},
    "Clear Output.ipynb": {},
    "Empty Cell.ipynb": {},
    "Factorials.ipynb": {},
    "HelloWorld.ipynb": {},
    "Inline Image.ipynb": {},
    "Interrupt.ipynb": {"timeout": 3, "allow_errors": True},
    "Skip Exceptions with Cell Tags.ipynb": {},
    "Skip Exceptions.ipynb": {"allow_errors": True},
    "Skip Execution with Cell Tag.ipynb": {},
    "SVG.ipynb": {},
    "Unicode.ipynb": {},
    "UnicodePy3.ipynb": {},
    "update-display-id.ipynb": {},
    "Check History in Memory.ipynb": {},
}
LEFT_OUT = {
    "JupyterWidgets.ipynb", "Output.ipynb", "Error.ipynb", "Autokill.ipynb",
    "Disable Stdin.ipynb", "Sleep1s.ipynb", "Parallel Execute A.ipynb", "Parallel Execute B.ipynb",
}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A writable copy of the notebooks (their cells run with it as working directory)."""
    target = tmp_path_factory.mktemp("conformance")
    shutil.copytree(SOURCE, target, dirs_exist_ok=True)
    return str(target)


def test_every_notebook_is_compared_or_left_out_with_a_reason(files):
    present = {name for name in os.listdir(files) if name.endswith(".ipynb")}
    assert present == set(COMPARED) | LEFT_OUT


@pytest.mark.parametrize("name", sorted(COMPARED))
def test_notebook_reproduces_its_stored_outputs(files, name):
    stored = nbformat.read(os.path.join(files, name), as_version=4)
    executed = kx.run_notebook(cleaned(stored), cwd=files, env=TERMINAL, **COMPARED[name])
    assert differences(stored, executed) == []
    nbformat.validate(executed)


def test_error_notebook_raises_cell_execution_error(files):
    with pytest.raises(kx.CellExecutionError) as caught:
        kx.run_notebook(os.path.join(files, "Error.ipynb"))
    error = caught.value
    assert (error.cell_index, error.ename, error.evalue) == (0, "ZeroDivisionError", "division by zero")
    assert "----> 1 0 / 0" in error.traceback and "\x1b" not in error.traceback


def test_disabled_stdin_fails_the_cell_at_once(files):
    with pytest.raises(kx.CellExecutionError) as caught:
        kx.run_notebook(os.path.join(files, "Disable Stdin.ipynb"), timeout=20)
    assert caught.value.ename == "StdinNotImplementedError"


def test_a_kernel_that_kills_itself_fails_the_run_with_status_died(files, tmp_path):
    out = tmp_path / "autokill.out.ipynb"
    with pytest.raises(kx.CellExecutionError) as caught:
        kx.run_notebook(os.path.join(files, "Autokill.ipynb"), output_path=out)
    assert caught.value.result.status == "died"
    assert "SIGTERM" in caught.value.evalue
    (cell,) = nbformat.read(out, as_version=4).cells
    assert cell.outputs[-1].output_type == "error" and cell.outputs[-1].ename == "KernelDied"


def test_a_line_magic_usage_error_shows_what_nbclient_shows(tmp_path):
    """IPython reports a UsageError as a line on stderr and an error reply, with no error output:
    the cell must not get one made up (it used to, with an empty traceback)."""
    path = os.path.join(PAPERMILL, "line_magic_error.ipynb")
    reference = run_reference("nbclient", path, str(tmp_path / "nbclient.ipynb"))
    assert reference.error["ename"] == "UsageError"
    with pytest.raises(kx.CellExecutionError) as caught:
        kx.run_notebook(path, output_path=tmp_path / "out.ipynb")
    assert (caught.value.cell_index, caught.value.ename) == (0, "UsageError")
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert [(o.output_type, o.name) for o in executed.cells[0].outputs] == [("stream", "stderr")]
    assert differences(reference.nb, executed) == []
