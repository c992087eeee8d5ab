"""The AIDE drop-in: the scenarios AIDE's agent relies on, on real kernels."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kernelexec as kx
from kernelexec.integrations.aide import ExecutionResult, Interpreter

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def workspace(tmp_path):
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def interpreter(workspace) -> Iterator[Interpreter]:
    interpreter = Interpreter(workspace, timeout=2, pool_size=0)
    yield interpreter
    interpreter.cleanup_session()


def output(result: ExecutionResult) -> str:
    return "".join(result.term_out)


def test_define_use_error_timeout_continue(workspace):
    """An agent's steps in one session: results AIDE's agent can parse at every step."""
    with Interpreter(workspace, timeout=2) as interpreter:  # with the default warm pool
        defined = interpreter.run("import math\nx = math.sqrt(16)\nprint(f'x={x}')")
        assert defined.term_out == ["x=4.0\n", "Execution time: a moment (time limit is 2 seconds)."]
        assert (defined.exc_type, defined.exc_info, defined.exc_stack) == (None, None, None)

        used = interpreter.run("print(x * 2)", reset_session=False)
        assert used.term_out[0] == "8.0\n" and used.exc_type is None

        failed = interpreter.run(
            "def f(d):\n    return d['missing']\nprint('before')\nf({})", reset_session=False
        )
        assert failed.exc_type == "KeyError"
        assert failed.exc_info == {"args": ["missing"]}
        assert failed.exc_stack == [
            ("runfile.py", 4, "<module>", "f({})"),
            ("runfile.py", 2, "f", "return d['missing']"),
        ]
        text = output(failed)
        assert text.startswith("before\nTraceback (most recent call last):\n")
        assert 'File "runfile.py", line 2, in f' in text and "KeyError: 'missing'" in text

        timed_out = interpreter.run("import time\nprint('working')\ntime.sleep(30)", reset_session=False)
        assert timed_out.exc_type == "TimeoutError"
        assert timed_out.term_out[0] == "working\n"
        assert timed_out.term_out[-1] == "TimeoutError: Execution exceeded the time limit of 2 seconds"
        assert "time.sleep(30)" in output(timed_out)  # where the script was stuck
        assert 2 <= timed_out.exec_time < 4

        continued = interpreter.run("print(x + 1)", reset_session=False)  # state survived the interrupt
        assert continued.term_out[0] == "5.0\n" and continued.exc_type is None


def test_reset_session_starts_from_fresh_globals(interpreter):
    interpreter.run("y = 1")
    assert interpreter.run("print(y)", reset_session=False).term_out[0] == "1\n"
    fresh = interpreter.run("print(y)")  # reset_session=True is AIDE's default
    assert fresh.exc_type == "NameError" and fresh.exc_info["name"] == "y"


def test_scripts_run_as_the_agent_file_in_the_working_directory(workspace):
    (workspace / "helper.py").write_text("VALUE = 7\n")
    (workspace / "data.csv").write_text("a,b\n1,2\n")
    code = (
        "import os, helper\n"
        "print(os.getcwd(), __name__, __file__, helper.VALUE)\n"
        "print(open('solution.py').read() == open(__file__).read(), sorted(os.listdir('.')))\n"
    )
    with Interpreter(workspace, timeout=10, agent_file_name="solution.py", pool_size=0) as interpreter:
        result = interpreter.run(code)
    assert result.exc_type is None, output(result)
    assert result.term_out[0] == (
        f"{workspace} __main__ solution.py 7\nTrue ['data.csv', 'helper.py', 'solution.py']\n"
    )
    assert sorted(p.name for p in workspace.iterdir()) == ["data.csv", "helper.py"]  # file removed


def test_ipython_traceback_format(workspace):
    with Interpreter(workspace, timeout=10, format_tb_ipython=True, pool_size=0) as interpreter:
        result = interpreter.run("def f():\n    return 1 / 0\nf()")
    text = output(result)
    assert result.exc_type == "ZeroDivisionError"
    assert "File runfile.py:3" in text and "----> 2     return 1 / 0" in text
    assert "Traceback (most recent call last)" in text and "\x1b[" not in text


def test_syntax_error_and_system_exit_are_exceptions_of_the_script(interpreter):
    syntax = interpreter.run("x = (")
    assert syntax.exc_type == "SyntaxError" and syntax.exc_info["msg"] == "'(' was never closed"
    assert output(syntax).startswith('Traceback (most recent call last):\n  File "runfile.py", line 1\n')
    exited = interpreter.run("import sys\nsys.exit(3)")
    assert exited.exc_type == "SystemExit" and exited.exc_info == {"args": ["3"]}


def test_an_unanswered_interrupt_restarts_the_kernel(workspace):
    code = (
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('stubborn', flush=True)\nwhile True:\n    time.sleep(0.1)\n"
    )
    with Interpreter(workspace, timeout=1, interrupt_grace=1, pool_size=0) as interpreter:
        interpreter.run("z = 1")
        result = interpreter.run(code, reset_session=False)
        assert result.exc_type == "TimeoutError" and result.exc_info == {} and result.exc_stack == []
        assert result.term_out == ["stubborn\n", "TimeoutError: Execution exceeded the time limit of a second"]
        after = interpreter.run("print('z' in globals())", reset_session=False)
    assert after.term_out[0].startswith("The kernel was restarted after the previous script ignored")
    assert after.term_out[1] == "False\n"


def test_kernel_death_is_reported_and_the_next_run_works(interpreter):
    died = interpreter.run("print('bye', flush=True)\nimport os\nos._exit(3)")
    assert died.exc_type == "KernelDied"
    assert "exited with code 3" in output(died)
    assert interpreter.run("print('back')", reset_session=False).term_out[0] == "back\n"


def test_cleanup_session_then_run_again(interpreter):
    interpreter.run("w = 1")
    interpreter.cleanup_session()
    interpreter.cleanup_session()  # idempotent, as AIDE's
    assert interpreter.run("print(2)", reset_session=False).term_out[0] == "2\n"


def test_no_time_limit(workspace):
    with Interpreter(workspace, timeout=None, pool_size=0) as interpreter:
        result = interpreter.run("print(1)")
    assert result.term_out[-1] == "Execution time: a moment (no time limit)."


def test_working_dir_must_exist(tmp_path):
    with pytest.raises(kx.InvalidArgument, match="not an existing directory"):
        Interpreter(tmp_path / "missing", timeout=5)
