"""The command line, run as a real subprocess."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, run_cli

import kernelexec as kx

pytestmark = pytest.mark.timeout(90)


def test_exec_prints_the_result_and_exits_0():
    done = run_cli("exec", "print(1 + 1)")
    assert done.returncode == 0
    assert done.stdout.startswith("2\nExecution time:")


def test_exec_reads_code_from_stdin():
    done = run_cli("exec", "-", input="x = 20\nx + 1\n")
    assert done.returncode == 0 and done.stdout.startswith("21\n")


def test_exec_error_exits_1_with_the_traceback():
    done = run_cli("exec", "1/0")
    assert done.returncode == 1
    assert "ZeroDivisionError: division by zero" in done.stdout


def test_exec_timeout_exits_124(tmp_path):
    done = run_cli("exec", "--timeout", "1", "--cwd", str(tmp_path), "import time; time.sleep(30)")
    assert done.returncode == 124
    assert "TimeoutError: Execution exceeded the time limit of a second" in done.stdout


def test_exec_died_exits_137():
    done = run_cli("exec", "import os; os._exit(1)")
    assert done.returncode == 137
    assert "KernelDied" in done.stdout


def test_exec_with_an_unknown_kernel_explains_and_exits_2():
    done = run_cli("exec", "--kernel", "nope", "1")
    assert done.returncode == 2
    assert "no kernel spec named 'nope'" in done.stderr


def test_exec_with_an_unknown_kernel_names_the_flag_not_the_parameter():
    done = run_cli("exec", "--kernel", "nope", "1")
    assert "Pass one of those with --kernel" in done.stderr
    assert "kernel_name" not in done.stderr


def _popen_exec(*args: str, **kwargs) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "kernelexec", "exec", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs,
    )  # fmt: skip


def test_exec_shows_output_as_the_code_prints_it(tmp_path):
    go_on = tmp_path / "go-on"
    # The code waits for a file the test creates only once it has read the first line: if the
    # output came only at the end, the code would wait until its time limit (exit 124).
    code = (
        "import os, time\nprint('first', flush=True)\n"
        f"while not os.path.exists({str(go_on)!r}):\n    time.sleep(0.02)\nprint('second')"
    )
    process = _popen_exec("--timeout", "30", code, stdin=subprocess.DEVNULL)
    try:
        assert process.stdout.readline() == "first\n"
        go_on.touch()
        rest, errors = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, errors
    assert rest.startswith("second\nExecution time:")


def test_exec_writes_the_codes_stderr_to_stderr_and_the_footer_after_the_output():
    done = run_cli("exec", "import sys\nprint('out')\nprint('err', file=sys.stderr)\nprint('end', end='')\n7")
    assert done.returncode == 0
    assert done.stderr == "err\n"
    lines = done.stdout.splitlines()
    assert lines[:2] == ["out", "end7"]  # the result follows the open line, as in str(result)
    assert lines[2].startswith("Execution time:") and len(lines) == 3


def test_exec_prints_the_output_once():
    done = run_cli("exec", "print('only once')\n'and the result'")
    assert done.stdout.count("only once") == 1
    assert done.stdout.count("'and the result'") == 1


def test_ctrl_c_interrupts_the_code_and_exits_130_with_what_was_printed():
    code = "import time\nfor i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.1)"
    process = _popen_exec("--timeout", "30", code, stdin=subprocess.DEVNULL)
    try:
        assert process.stdout.readline() == "tick 0\n"
        process.send_signal(signal.SIGINT)
        out, errors = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130
    # What the code printed up to the interrupt, and nothing else (no traceback, no footer);
    # the interrupt may land inside the last print.
    lines = out.splitlines()
    assert lines[:-1] == [f"tick {i}" for i in range(1, len(lines))]
    assert not lines or lines[-1].startswith("tick")
    assert errors.startswith("kernelexec: interrupted after ") and errors.count("\n") == 1, errors


def test_input_without_stdin_says_to_pass_stdin():
    done = run_cli("exec", "input('name? ')")
    assert done.returncode == 1
    assert "pass --stdin to answer input() from the terminal" in done.stderr


def test_stdin_answers_input_and_getpass_from_our_stdin():
    code = "import getpass\nname = input('name? ')\nsecret = getpass.getpass('pin? ')\nprint(name, len(secret))"
    done = run_cli("exec", "--stdin", code, input="ada\n1234\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("name? pin? \nada 4\n")


def test_stdin_with_code_from_stdin_is_refused():
    done = run_cli("exec", "--stdin", "-", input="1")
    assert done.returncode == 2
    assert "--stdin cannot be used with CODE '-'" in done.stderr


def test_version():
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout == f"kernelexec {kx.__version__}\n"


def test_help_lists_every_exit_status():
    done = run_cli("--help")
    assert done.returncode == 0
    statuses = re.findall(r"^  (\d+) ", done.stdout.split("exit status:")[1], flags=re.M)
    assert statuses == ["0", "1", "2", "124", "130", "137", "143"]


HEAVY_MODULES = ("nbformat", "jsonschema", "zmq", "jupyter_client", "jupyter_core", "tornado", "tqdm")


def _heavy_modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY_MODULES)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.splitlines()[-1])


def test_import_kernelexec_loads_no_heavy_module():
    assert _heavy_modules_after("import kernelexec\nkernelexec.KernelexecError, kernelexec.__version__") == []


def test_kernelexec_help_loads_no_heavy_module():
    code = "from kernelexec.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert _heavy_modules_after(code) == []


def test_public_names_are_there_on_first_use():
    loaded = _heavy_modules_after("import kernelexec\nkernelexec.Session, kernelexec.run_notebook")
    assert "nbformat" in loaded and "jupyter_client" in loaded  # the probe sees what a name costs
    assert set(kx.__all__) <= set(dir(kx))
    for name in kx.__all__:
        assert getattr(kx, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kx.nope  # noqa: B018
