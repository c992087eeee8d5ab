"""`kernelexec run`: exit statuses, the written notebook, parameters, progress, and notebooks/."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import nbformat
import pytest
from conftest import REPO_ROOT, run_cli
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = pytest.mark.timeout(90)


def write(path, *sources: str, parameters: str | None = None) -> str:
    cells = [new_code_cell(s) for s in sources]
    if parameters is not None:
        cells.insert(0, new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    nbformat.write(new_notebook(cells=cells), path)
    return str(path)


def test_run_writes_the_executed_notebook_and_exits_0(tmp_path):
    nb = write(tmp_path / "nb.ipynb", "print('hello')", "6 * 7")
    out = tmp_path / "out.ipynb"
    done = run_cli("run", nb, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 cells ran" in done.stdout and str(out) in done.stdout
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[1].outputs[0].data["text/plain"] == "42"
    # Not a terminal: one plain line per cell on stderr.
    assert "[1/2] cell 0: ok in" in done.stderr and "[2/2] cell 1: ok in" in done.stderr


def test_a_failing_cell_exits_1_with_its_traceback_and_the_notebook_up_to_it(tmp_path):
    nb = write(tmp_path / "nb.ipynb", "print('first')", "{}['missing']", "print('never')")
    out = tmp_path / "out.ipynb"
    done = run_cli("run", nb, "-o", str(out))
    assert done.returncode == 1
    assert "cell 1 failed (error): KeyError: 'missing'" in done.stderr
    assert "----> 1 {}['missing']" in done.stderr
    banner, first, anchor, failing, never = nbformat.read(out, as_version=4).cells
    assert "In [2]" in banner.source and 'id="papermill-error-cell"' in anchor.source  # papermill's
    assert first.outputs[0].text == "first\n"
    assert failing.outputs[0].ename == "KeyError" and failing.metadata.papermill.status == "failed"
    assert never.execution_count is None and never.metadata.papermill.status == "pending"


def test_allow_errors_exits_0_and_keeps_going(tmp_path):
    nb = write(tmp_path / "nb.ipynb", "1/0", "print('after')")
    out = tmp_path / "out.ipynb"
    done = run_cli("run", nb, "-o", str(out), "--allow-errors")
    assert done.returncode == 0
    assert nbformat.read(out, as_version=4).cells[1].outputs[0].text == "after\n"


def test_a_cell_over_the_timeout_exits_124(tmp_path):
    nb = write(tmp_path / "nb.ipynb", "import time\ntime.sleep(30)")
    done = run_cli("run", nb, "--timeout", "1")
    assert done.returncode == 124
    assert "TimeoutError" in done.stderr and "KeyboardInterrupt" in done.stderr


def test_parameters_are_injected_and_typed(tmp_path):
    nb = write(tmp_path / "nb.ipynb", "print(repr(n), repr(name), repr(flag))", parameters="n = 1\nname = 'a'\nflag = False")
    out = tmp_path / "out.ipynb"
    done = run_cli("run", nb, "-o", str(out), "-p", "n", "5", "-p", "name", "tuned", "-p", "flag", "True")
    assert done.returncode == 0, done.stderr
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[1].metadata.tags == ["injected-parameters"]
    assert executed.cells[2].outputs[0].text == "5 'tuned' True\n"


def test_a_missing_notebook_exits_2_and_says_so(tmp_path):
    done = run_cli("run", str(tmp_path / "nope.ipynb"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_on_a_terminal_progress_is_a_tqdm_bar(tmp_path):
    nb = write(tmp_path / "nb.ipynb", "import time\ntime.sleep(0.2)", "1")
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "kernelexec", "run", nb], stdin=terminal, stdout=terminal,
        stderr=terminal, env=env, close_fds=True,
    )  # fmt: skip
    os.close(terminal)
    output = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closes when the process exits
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
        assert process.wait(timeout=30) == 0
    text = output.decode("utf-8", "replace")
    assert "nb.ipynb: 100%" in text and "2/2" in text and ("cell/s" in text or "s/cell" in text), text
    assert "[1/2] cell 0" not in text  # the plain lines are for pipes and logs


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("quickstart.ipynb", [], "'30'"),
        ("experiment.ipynb", ["-p", "samples", "4000", "-p", "seed", "11"], "samples=4000 seed=11\n"),
    ],
)
def test_the_example_notebooks_run(tmp_path, name, arguments, expected):
    out = tmp_path / name
    done = run_cli("run", os.path.join(REPO_ROOT, "notebooks", name), "-o", str(out), *arguments, timeout=120)
    assert done.returncode == 0, done.stderr
    executed = nbformat.read(out, as_version=4)
    shown = [o.get("text") or o.get("data", {}).get("text/plain") for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert expected in "".join(x for x in shown if x) or expected in shown
