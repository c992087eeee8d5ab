"""The command line, run as a real subprocess."""

from __future__ import annotations

import pytest
from conftest import run_cli

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
