"""`kernelexec run`: exit statuses, the written notebook, parameters, progress, and notebooks/."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import nbformat
import psutil
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


def saved_text(path, index: int) -> str:
    """The stream text of cell ``index`` in the notebook at ``path`` as saved now ('' if none)."""
    if not path.exists():
        return ""
    cell = nbformat.read(path, as_version=4).cells[index]
    return "".join(o.get("text", "") for o in cell.outputs)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_stops_the_run_keeping_the_running_cells_outputs(tmp_path, signum, status):
    pid_file, out = tmp_path / "kernel.pid", tmp_path / "out.ipynb"
    loop = (
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "for i in range(60):\n    print(i, flush=True)\n    time.sleep(1)"
    )
    nb = write(tmp_path / "nb.ipynb", "x = 1", loop, "print('never')")
    command = [sys.executable, "-m", "kernelexec", "run", nb, "-o", str(out), "--autosave-cell-every", "0.1"]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(1200):  # at most 60 s for the saved notebook to show the client has 0, 1, 2
            if "2\n" in saved_text(out, 1):
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == status, stderr
    assert f"stopped by {signal.Signals(signum).name}; the notebook so far is in {out}" in stderr
    done, running, never = nbformat.read(out, as_version=4).cells
    assert running.outputs[0].text.startswith("0\n1\n2\n") and running.execution_count == 2
    assert [c.metadata.papermill.status for c in (done, running, never)] == ["completed", "failed", "pending"]
    kernel = int(pid_file.read_text())
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE


NOT_NOTEBOOKS = {
    "script.py": b"print('hello')\n",
    "empty.ipynb": b"",
    "other.ipynb": b'{"a": 1}',
    "random.ipynb": bytes(range(128, 256)) * 4,
}


@pytest.mark.parametrize("name", ["README.md", *sorted(NOT_NOTEBOOKS)])
def test_a_file_that_is_not_a_notebook_exits_2_with_one_line(tmp_path, name):
    path = os.path.join(REPO_ROOT, name) if name == "README.md" else str(tmp_path / name)
    if name != "README.md":
        (tmp_path / name).write_bytes(NOT_NOTEBOOKS[name])
    done = run_cli("run", path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"kernelexec: {path!r} is ") and done.stderr.count("\n") == 1, done.stderr


def test_parameters_come_from_yaml_and_json_files_and_p_wins(tmp_path):
    nb = write(tmp_path / "nb.ipynb", "print(repr(n), repr(name), repr(when))", parameters="n = 1\nname = 'a'\nwhen = None")
    (tmp_path / "p.yaml").write_text("n: 5\nname: from-yaml\nwhen: 2024-01-01  # stays a string\n")
    (tmp_path / "p.json").write_text('{"name": "from-json"}')
    out = tmp_path / "out.ipynb"
    done = run_cli("run", nb, "-o", str(out), "-f", str(tmp_path / "p.yaml"), "-f", str(tmp_path / "p.json"), "-p", "n", "7")
    assert done.returncode == 0, done.stderr
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[2].outputs[0].text == "7 'from-json' '2024-01-01'\n"
    assert executed.metadata.papermill.parameters == {"n": 7, "name": "from-json", "when": "2024-01-01"}


def test_a_parameters_file_that_is_not_a_mapping_exits_2(tmp_path):
    (tmp_path / "p.yaml").write_text("- 1\n- 2\n")
    done = run_cli("run", write(tmp_path / "nb.ipynb", "1"), "-f", str(tmp_path / "p.yaml"))
    assert done.returncode == 2 and "must hold name: value pairs, not a list" in done.stderr


def test_dash_reads_the_notebook_from_stdin_and_writes_it_to_stdout(tmp_path):
    text = nbformat.writes(new_notebook(cells=[new_code_cell("import os\nprint(os.getcwd())")]))
    done = run_cli("run", "-", "-o", "-", input=text, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    executed = nbformat.reads(done.stdout, as_version=4)  # stdout holds the notebook and only it
    assert executed.cells[0].outputs[0].text == os.path.realpath(tmp_path) + "\n"
    assert executed.metadata.papermill.input_path == "-" == executed.metadata.papermill.output_path
    assert "-: 1 cells ran" in done.stderr


@pytest.mark.parametrize(("code", "status"), [("sys.exit(0)", 0), ("raise SystemExit", 0), ("sys.exit(3)", 1)])
def test_sys_exit_ends_the_run_with_its_status(tmp_path, code, status):
    out = tmp_path / "out.ipynb"
    done = run_cli("run", write(tmp_path / "nb.ipynb", f"import sys\n{code}", "print('never')"), "-o", str(out))
    assert done.returncode == status, done.stderr
    assert "ended the run with SystemExit" in done.stdout if status == 0 else "SystemExit: 3" in done.stderr
    never = [c for c in nbformat.read(out, as_version=4).cells if c.source == "print('never')"]
    assert never[0].execution_count is None
    assert "To exit: use" not in out.read_text()
