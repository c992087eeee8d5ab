"""ExecutionResult views and footer, built directly (no kernel)."""

from __future__ import annotations

import pytest
from nbformat import NotebookNode

import kernelexec as kx
from kernelexec import ErrorInfo, ExecutionResult, Frame


def stream(text: str, name: str = "stdout") -> NotebookNode:
    return NotebookNode(output_type="stream", name=name, text=text)


def result(status="ok", outputs=(), error=None, **kwargs) -> ExecutionResult:
    defaults = dict(exec_time=2.2, execution_count=1, time_limit=60.0)
    defaults.update(kwargs)
    return ExecutionResult(status=status, outputs=list(outputs), error=error, **defaults)


def test_footer_gives_humanized_time_and_limit():
    r = result(outputs=[stream("hi\n")])
    assert str(r) == "hi\nExecution time: 2 seconds (time limit is a minute)."
    assert r.summary() == str(r)
    assert str(result(time_limit=float("inf"))) == "Execution time: 2 seconds (no time limit)."


def test_timeout_footer_names_the_limit_and_the_kernel_fate():
    r = result("timeout", error=ErrorInfo("TimeoutError", "Execution exceeded the time limit of a minute"))
    assert "TimeoutError: Execution exceeded the time limit of a minute (the code was interrupted" in str(r)
    restarted = result("timeout", error=r.error, restarted=True)
    assert "was restarted; its state is lost" in str(restarted)
    assert r.exc_type == "TimeoutError"


def test_aide_fields():
    frames = [Frame("Cell In[1]", 2, "f", "1/0")]
    err = ErrorInfo("ZeroDivisionError", "division by zero", ["tb"], frames, {"args": ["division by zero"]})
    r = result("error", error=err)
    assert r.exc_type == "ZeroDivisionError"
    assert r.exc_info == {"args": ["division by zero"]}
    assert r.exc_stack == [("Cell In[1]", 2, "f", "1/0")]
    assert "".join(r.term_out) == str(r)
    ok = result()
    assert (ok.exc_type, ok.exc_info, ok.exc_stack) == (None, None, None)


def test_text_strips_ansi_and_collapses_nothing_else():
    tb = NotebookNode(output_type="error", ename="E", evalue="v", traceback=["\x1b[31mE\x1b[0m: v"])
    r = result("error", outputs=[stream("out\n"), tb], error=ErrorInfo("E", "v", ["\x1b[31mE\x1b[0m: v"]))
    assert r.text == "out\nE: v\n"
    assert r.error.text == "E: v"


def test_views_of_outputs():
    outputs = [
        stream("a"),
        stream("b", "stderr"),
        NotebookNode(output_type="display_data", data={"image/png": "iVBOR", "text/plain": "<img>"}, metadata={}),
        NotebookNode(output_type="execute_result", data={"text/plain": "42"}, metadata={}, execution_count=1),
    ]
    r = result(outputs=outputs)
    assert (r.stdout, r.stderr, r.result) == ("a", "b", "42")
    assert r.displays == [{"image/png": "iVBOR", "text/plain": "<img>"}, {"text/plain": "42"}]
    assert r.ok


def test_raise_for_error_carries_the_result():
    err = ErrorInfo("KeyError", "'k'")
    r = result("error", error=err)
    with pytest.raises(kx.ExecutionFailed, match="KeyError: 'k'") as caught:
        r.raise_for_error()
    assert caught.value.result is r
    assert isinstance(caught.value, kx.KernelexecError)
    assert result().raise_for_error().ok


def test_truncation_footer_points_at_the_spill_file():
    r = result(truncated_bytes=1234, output_path="/tmp/out.txt")
    assert "Output truncated: 1,234 bytes not shown; the full output is in /tmp/out.txt." in str(r)
