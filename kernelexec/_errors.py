"""The exceptions kernelexec raises.

Code that fails inside the kernel is never raised: it is data in the ``ExecutionResult``, until
the caller asks for an exception with ``result.raise_for_error()``. What is raised is about the
machinery or the caller's own request::

    KernelexecError
    ├── KernelStartError      the kernel could not be started (bad kernel name, never ready, bad cwd)
    ├── SessionClosed         the session (or manager) was shut down and cannot run code
    ├── TooManySessions       a SessionManager already holds max_sessions sessions
    ├── UnknownSession        (also a KeyError) SessionManager.get() of an id it does not hold
    ├── ExecutionFailed       raise_for_error() on a result that is not ok
    │   └── CellExecutionError  a notebook cell failed during run_notebook
    ├── ForkNotSupported      fork()/checkpoint() of a kernel that cannot be copied (gateway, not Python)
    ├── SandboxUnavailable    sandbox= was asked for on a machine that cannot provide it
    ├── (ValueError)          InvalidArgument: an option has a value that cannot work
    └── (ValueError)          InvalidNotebook: a file or node given as a notebook is not one

Every message says what happened and what to do next. ``ForkWarning`` (a ``UserWarning``) says what
a copy of a kernel lacks (threads other than the one running the code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._result import ExecutionResult


class KernelexecError(Exception):
    """Base class of every exception kernelexec raises."""


class InvalidArgument(KernelexecError, ValueError):
    """An argument has a value kernelexec cannot work with (e.g. a negative timeout)."""


class InvalidNotebook(KernelexecError, ValueError):
    """What was given as a notebook is not one (not JSON, not a notebook, or invalid nbformat)."""


class KernelStartError(KernelexecError):
    """The kernel could not be started, or did not become ready in time."""


class SessionClosed(KernelexecError):
    """The session was shut down; start a new one to run more code."""


class TooManySessions(KernelexecError):
    """A SessionManager already holds its maximum number of sessions."""


class UnknownSession(KernelexecError, KeyError):
    """``SessionManager.get()`` was asked for a session id the manager does not hold."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class ForkNotSupported(KernelexecError):
    """The session's kernel cannot be copied: it runs on a gateway, or is not a Python kernel."""


class SandboxUnavailable(KernelexecError):
    """``sandbox=`` was asked for, and this machine cannot sandbox a kernel; the message names
    what is missing. A sandbox is never silently dropped."""


class ForkWarning(UserWarning):
    """A copy of a kernel (fork, checkpoint) lacks something the kernel had: its other threads."""


class ExecutionFailed(KernelexecError):
    """Raised by ``ExecutionResult.raise_for_error()`` when the result is not ok.

    The result is in ``.result``: its outputs, traceback and status are all still there.
    """

    def __init__(self, result: ExecutionResult) -> None:
        self.result = result
        super().__init__(self._describe(result))

    @staticmethod
    def _describe(result: ExecutionResult) -> str:
        if result.error is not None:
            return f"execution ended with status {result.status!r}: {result.error.headline}"
        return f"execution ended with status {result.status!r}"


class CellExecutionError(ExecutionFailed):
    """A notebook cell failed while running a notebook with ``allow_errors=False``.

    Carries the cell index, the exception name and value, and the plain-text traceback.
    """

    def __init__(self, result: ExecutionResult, cell_index: int) -> None:
        self.cell_index = cell_index
        error = result.error
        self.ename = error.ename if error else result.status
        self.evalue = error.evalue if error else ""
        self.traceback = error.text if error else result.text
        super().__init__(result)
        self.args = (
            f"cell {cell_index} failed with {self.ename}: {self.evalue}\n\n{self.traceback}\n"
            "Fix the cell, or pass allow_errors=True to record the error and go on.",
        )
