"""kernelexec: run code in persistent, Jupyter-kernel-backed sessions.

>>> import kernelexec as kx
>>> with kx.Session(timeout=30) as s:
...     s.execute("x = 2")
...     s.execute("x * 21").result
'42'
"""

from ._errors import (
    CellExecutionError,
    ExecutionFailed,
    InvalidArgument,
    InvalidNotebook,
    KernelexecError,
    KernelStartError,
    SessionClosed,
    TooManySessions,
    UnknownSession,
)
from ._manager import AsyncSessionManager, SessionInfo, SessionManager
from ._notebook import async_run_notebook, run_notebook
from ._progress import Progress
from ._result import ErrorInfo, ExecutionResult
from ._session import AsyncSession, Session, SessionStats
from ._traceback import Frame

__version__ = "0.1.0"

__all__ = [
    "AsyncSession",
    "AsyncSessionManager",
    "CellExecutionError",
    "ErrorInfo",
    "ExecutionFailed",
    "ExecutionResult",
    "Frame",
    "InvalidArgument",
    "InvalidNotebook",
    "KernelStartError",
    "KernelexecError",
    "Progress",
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
