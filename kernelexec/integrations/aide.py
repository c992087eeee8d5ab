"""A drop-in for AIDE's ``aide.interpreter.Interpreter``, running the agent's scripts in a kernel.

AIDE runs each script the agent writes in a child process: the code is saved as
``agent_file_name`` in ``working_dir`` and executed there as ``__main__``; stdout, stderr and the
traceback make up ``term_out``, followed by a line with the run time or, past the time limit,
``TimeoutError: Execution exceeded the time limit of ...``. ``run(code, reset_session=True)``
starts from a fresh process; ``reset_session=False`` keeps the previous script's globals.

This class keeps those meanings with a Jupyter kernel in place of the child process, so a hung
script is interrupted (and the kernel restarted when the interrupt is not answered) without ever
hanging the agent, and a reset takes a pre-started kernel from a warm pool instead of a cold start.

>>> from kernelexec.integrations.aide import Interpreter
>>> interpreter = Interpreter("./workspace", timeout=600)
>>> result = interpreter.run("x = 21 * 2\\nprint(x)")
>>> result.term_out
['42\\n', 'Execution time: a moment (time limit is 10 minutes).']
>>> interpreter.run("print(x + 1)", reset_session=False).term_out[0]
'43\\n'
>>> interpreter.cleanup_session()
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import humanize

from .._errors import InvalidArgument
from .._manager import SessionManager
from .._result import ExecutionResult as KernelResult
from .._session import Session
from .._traceback import plain_traceback

# Effectively no limit, for AIDE's ``timeout=None``: kernelexec always needs a number.
_NO_LIMIT_SECONDS = 10 * 365 * 24 * 3600.0
_SESSION_ID = "aide"
_RUNNER = "__kernelexec_aide_run__"
_CARRIER = "KernelexecAideScriptFailed"
_LOST_AFTER_TIMEOUT = (
    "The kernel was restarted after the previous script ignored its interrupt: the state of "
    "earlier scripts is lost.\n"
)

# Runs (silently) in every kernel the interpreter gets. It defines one function in the kernel's
# namespace; the agent's scripts run in a separate globals dict, as AIDE's ``exec`` does, so they
# do not see it. When a script raises, the exception is summarised as AIDE does (traceback text,
# class name, args and name/msg/obj attributes, frames) and re-raised as a carrier exception whose
# message is that summary as JSON: an error reply is never lost to output truncation, and
# ``_render_traceback_`` makes the kernel show the script's traceback, not the carrier's.
_KERNEL_CODE = r'''
def _kernelexec_aide_setup(working_dir, file_name, format_tb_ipython, mute_warnings):
    import builtins, json, os, sys, traceback, warnings
    from IPython import get_ipython

    if mute_warnings:
        warnings.filterwarnings("ignore")
    if working_dir not in sys.path:
        sys.path.append(working_dir)
    scope = {"__name__": "__main__", "__file__": file_name, "__builtins__": builtins}
    script_builtins = _script_builtins(get_ipython())

    class KernelexecAideScriptFailed(Exception):
        def __init__(self, summary, text):
            super().__init__(json.dumps(summary))
            self.text = text

        def _render_traceback_(self):
            return self.text.splitlines()

    def format_traceback(error, script_tb):
        if format_tb_ipython:
            from IPython.core import ultratb
            try:
                formatter = ultratb.VerboseTB(color_scheme="NoColor")
            except TypeError:  # IPython 9 replaced colour schemes with themes
                formatter = ultratb.VerboseTB(theme_name="nocolor")
            text = str(formatter.text(type(error), error, script_tb))
        else:
            text = "".join(traceback.format_exception(type(error), error, script_tb))
            if script_tb is None:  # AIDE's traceback always has its runner's frame, then left out
                text = "Traceback (most recent call last):\n" + text
        return text.replace(os.path.join(working_dir, file_name), file_name)

    def cut_interrupt_handler(tb):
        # kernelexec's SIGINT handler raises the KeyboardInterrupt: its frame is innermost.
        previous = None
        while tb is not None and tb.tb_next is not None:
            previous, tb = tb, tb.tb_next
        if previous is not None and tb.tb_frame.f_code.co_filename == "<kernelexec>":
            previous.tb_next = None

    def summarise(error):
        cut_interrupt_handler(error.__traceback__)
        script_tb = error.__traceback__.tb_next  # leave out this runner's own frame
        info = {"args": [str(arg) for arg in getattr(error, "args", ())]}
        for attribute in ("name", "msg", "obj"):
            if hasattr(error, attribute):
                info[attribute] = str(getattr(error, attribute))
        stack = [list(frame) for frame in traceback.extract_tb(script_tb)]
        summary = {"exc_type": type(error).__name__, "exc_info": info, "exc_stack": stack}
        return summary, format_traceback(error, script_tb)

    def as_in_aides_process():
        # What a script sees in AIDE's child process: site's exit() and quit() (IPython hides
        # them while a cell runs), an empty stdin, so input() raises EOFError, and stderr
        # written where stdout is, in one stream, in the order of the writes.
        saved = {name: builtins.__dict__.get(name, scope) for name in script_builtins}
        streams = sys.stdin, sys.stderr
        stdin = open(os.devnull)
        sys.stdin, sys.stderr = stdin, sys.stdout
        builtins.__dict__.update(script_builtins)

        def restore():
            sys.stdin, sys.stderr = streams
            for name, value in saved.items():
                if value is scope:
                    builtins.__dict__.pop(name, None)
                else:
                    builtins.__dict__[name] = value
            stdin.close()

        return restore

    def run(code):
        os.chdir(working_dir)
        with open(file_name, "w") as script:
            script.write(code)
        failure = None
        restore = as_in_aides_process()
        try:
            exec(compile(code, file_name, "exec"), scope)
        except BaseException as error:
            failure = KernelexecAideScriptFailed(*summarise(error))
        finally:
            restore()
            try:
                os.remove(os.path.join(working_dir, file_name))
            except OSError:
                pass
        if failure is not None:
            sys.stdout.flush()
            raise failure from None

    return run


def _script_builtins(shell):
    import os

    found = {}
    try:
        import _sitebuiltins
    except ImportError:
        pass
    else:
        eof = "Ctrl-Z plus Return" if os.sep == "\\" else "Ctrl-D (i.e. EOF)"
        found.update((name, _sitebuiltins.Quitter(name, eof)) for name in ("exit", "quit"))
    # While a cell runs, builtins.input is ipykernel's (StdinNotImplementedError without a
    # front end's stdin); Python's own, which reads sys.stdin, is kept on the kernel.
    plain_input = getattr(getattr(shell, "kernel", None), "_sys_raw_input", None)
    if type(plain_input) is type(len):
        found["input"] = plain_input
    return found
'''


@dataclass
class ExecutionResult:
    """What ``Interpreter.run`` returns: AIDE's ``ExecutionResult`` fields with AIDE's meanings.

    ``term_out`` is the script's output in order, then its traceback, then one line: the run time,
    or ``TimeoutError: Execution exceeded the time limit of ...``. ``exc_type`` is the exception's
    class name (``"TimeoutError"`` past the time limit, ``"KernelDied"`` when the kernel process
    died), ``exc_info`` its ``args`` and ``name``/``msg``/``obj`` attributes as strings,
    ``exc_stack`` its frames as ``(filename, lineno, name, line)``, innermost last.
    """

    term_out: list[str]
    exec_time: float
    exc_type: str | None
    exc_info: dict[str, Any] | None = None
    exc_stack: list[tuple[Any, ...]] | None = None


class Interpreter:
    """AIDE's interpreter on a Jupyter kernel: same constructor, ``run`` and ``cleanup_session``.

    ``working_dir`` is where scripts run (it must exist); ``timeout`` is the time limit of one
    ``run`` in seconds (``None``: no limit); ``format_tb_ipython`` picks IPython's verbose
    traceback format over the standard one; ``agent_file_name`` is the name the script is saved
    under while it runs (tracebacks show it). Beyond AIDE's arguments: ``interrupt_grace`` (how
    long an interrupted script may take to stop before its kernel is restarted; AIDE waits 5
    seconds), ``pool_size`` (pre-started kernels that make ``reset_session=True`` fast; 0 starts
    each kernel when needed), ``mute_warnings`` (AIDE hides Python warnings from scripts) and any
    ``kernelexec.Session`` option (``inherit_env``, ``env``, ``memory_limit``, ...).
    """

    def __init__(
        self,
        working_dir: Path | str,
        timeout: float | None = 3600,
        format_tb_ipython: bool = False,
        agent_file_name: str = "runfile.py",
        *,
        interrupt_grace: float = 5.0,
        pool_size: int = 1,
        mute_warnings: bool = True,
        **session_options: Any,
    ) -> None:
        self.working_dir = Path(working_dir).resolve()
        if not self.working_dir.is_dir():
            raise InvalidArgument(f"working_dir {str(self.working_dir)!r} is not an existing directory")
        self.timeout = timeout
        self.format_tb_ipython = format_tb_ipython
        self.agent_file_name = agent_file_name
        setup = (
            _KERNEL_CODE
            + f"{_RUNNER} = _kernelexec_aide_setup({str(self.working_dir)!r}, {agent_file_name!r}, "
            f"{bool(format_tb_ipython)!r}, {bool(mute_warnings)!r})\n"
            "del _kernelexec_aide_setup, _script_builtins\n"
        )
        self._manager_options: dict[str, Any] = dict(
            session_options,
            pool_size=pool_size,
            max_sessions=1,
            idle_timeout=None,
            timeout=_NO_LIMIT_SECONDS if timeout is None else float(timeout),
            interrupt_grace=interrupt_grace,
            cwd=self.working_dir,
            startup_code=setup,
        )
        self._manager: SessionManager | None = None
        self._session: Session | None = None
        self._fresh = False  # the session's kernel has run no script yet
        # A timeout restarted the kernel; AIDE's result for it says nothing of state.
        self._restarted_silently = False

    def __enter__(self) -> Interpreter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup_session()

    def run(self, code: str, reset_session: bool = True) -> ExecutionResult:
        """Run ``code`` as a script and return its output, run time and exception, if any.

        With ``reset_session=True`` (AIDE's default) the script starts from a fresh kernel; with
        ``False`` it continues in the previous script's globals (a fresh kernel on first use).
        A script past the time limit is interrupted: ``exc_type`` is ``"TimeoutError"``, and the
        kernel keeps its state unless it had to be restarted because the interrupt went unanswered
        (the next ``reset_session=False`` run's ``term_out`` then starts by saying so).
        """
        session = self._current_session()
        if reset_session and not self._fresh:
            session.restart()
        told = not reset_session and self._restarted_silently
        self._fresh = self._restarted_silently = False
        result = self._aide_result(session.execute(f"{_RUNNER}({code!r})"))
        if told:
            result.term_out.insert(0, _LOST_AFTER_TIMEOUT)
        return result

    def cleanup_session(self) -> None:
        """Stop the kernel (and the pre-started ones); the next ``run`` starts afresh."""
        manager, self._manager, self._session = self._manager, None, None
        if manager is not None:
            manager.close()

    def _current_session(self) -> Session:
        if self._session is None:
            manager = self._manager = SessionManager(**self._manager_options)
            self._session = manager.session(_SESSION_ID)
            self._fresh = True
        return self._session

    def _aide_result(self, result: KernelResult) -> ExecutionResult:
        term_out = [output.text for output in result.outputs if output.output_type == "stream"]
        exc_type = exc_info = exc_stack = None
        failure = _script_failure(result)
        if failure is not None:  # the script raised (on timeout: where it was interrupted)
            summary, text = failure
            exc_type, exc_info = summary["exc_type"], summary["exc_info"]
            exc_stack = [tuple(frame) for frame in summary["exc_stack"]]
            term_out.append(text)
        elif result.error is not None and result.status != "timeout":
            error = result.error
            exc_type, exc_info, exc_stack = error.ename, dict(error.exc_info), result.exc_stack
            term_out.append(error.text if error.text.endswith("\n") else error.text + "\n")
        if result.status == "timeout":
            # Not stopped by the interrupt, AIDE's child is killed: no exception, no frames.
            exc_type, exc_info, exc_stack = "TimeoutError", exc_info or {}, exc_stack or []
            self._restarted_silently = result.restarted
            term_out.append(f"TimeoutError: Execution exceeded the time limit of {self._limit()}")
        else:
            if result.restarted:
                term_out.append("The kernel was restarted: the state of earlier scripts is lost.\n")
            term_out.append(
                f"Execution time: {humanize.naturaldelta(result.exec_time)} "
                f"({'no time limit' if self.timeout is None else 'time limit is ' + self._limit()})."
            )
        if result.restarted:
            self._fresh = True
        return ExecutionResult(term_out, result.exec_time, exc_type, exc_info, exc_stack)

    def _limit(self) -> str:
        return humanize.naturaldelta(self.timeout) if self.timeout is not None else "none"


def _script_failure(result: KernelResult) -> tuple[dict[str, Any], str] | None:
    """The summary and traceback text of the script's exception, from the error output the
    kernel sent (a timeout's result keeps the output, but its error is the TimeoutError)."""
    for output in result.outputs:
        if output.output_type == "error" and output.ename == _CARRIER:
            try:
                summary = json.loads(output.evalue)
            except ValueError:
                return None
            if not (isinstance(summary, dict) and "exc_type" in summary):
                return None
            text = plain_traceback(output.traceback)
            return summary, text if text.endswith("\n") else text + "\n"
    return None


__all__ = ["ExecutionResult", "Interpreter"]
