"""kernelexec: run code in persistent, Jupyter-kernel-backed sessions.

>>> import kernelexec as kx
>>> with kx.Session(timeout=30) as s:
...     s.execute("x = 2")
...     s.execute("x * 21").result
'42'

The exceptions are imported with the package; every other public name is imported on first
use (PEP 562), so ``import kernelexec`` and ``kernelexec --help`` do not pay for nbformat,
jsonschema, ZMQ and jupyter_client (about 1.5 s of imports) until a session is made.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    CellExecutionError,
    ExecutionFailed,
    ForkNotSupported,
    ForkWarning,
    InvalidArgument,
    InvalidNotebook,
    KernelexecError,
    KernelStartError,
    SandboxUnavailable,
    SessionClosed,
    TooManySessions,
    UnknownSession,
)

if TYPE_CHECKING:
    from ._checkpoints import AsyncCheckpoint, Checkpoint
    from ._manager import AsyncSessionManager, SessionInfo, SessionManager
    from ._notebook import async_run_notebook, run_notebook
    from ._progress import Progress
    from ._result import ErrorInfo, ExecutionResult
    from ._sandbox import Sandbox
    from ._session import AsyncSession, Session
    from ._state import SessionStats
    from ._traceback import Frame

__version__ = "0.1.0"

# Public name -> the private module that defines it, imported when the name is first used.
_LAZY = {
    "AsyncCheckpoint": "_checkpoints",
    "Checkpoint": "_checkpoints",
    "AsyncSessionManager": "_manager",
    "SessionInfo": "_manager",
    "SessionManager": "_manager",
    "async_run_notebook": "_notebook",
    "run_notebook": "_notebook",
    "Progress": "_progress",
    "ErrorInfo": "_result",
    "ExecutionResult": "_result",
    "Sandbox": "_sandbox",
    "AsyncSession": "_session",
    "Session": "_session",
    "SessionStats": "_state",
    "Frame": "_traceback",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kernelexec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AsyncCheckpoint",
    "AsyncSession",
    "AsyncSessionManager",
    "CellExecutionError",
    "Checkpoint",
    "ErrorInfo",
    "ExecutionFailed",
    "ExecutionResult",
    "ForkNotSupported",
    "ForkWarning",
    "Frame",
    "InvalidArgument",
    "InvalidNotebook",
    "KernelStartError",
    "KernelexecError",
    "Progress",
    "Sandbox",
    "SandboxUnavailable",
    "Session",
    "SessionClosed",
    "SessionInfo",
    "SessionManager",
    "SessionStats",
    "TooManySessions",
    "UnknownSession",
    "__version__",
    "async_run_notebook",
    "run_notebook",
]
