"""What a session knows at a moment: its lifecycle phase, kernel, call in flight and counters.

Shared by both faces of a session (``AsyncSession`` and the ``Session`` over it) and read by the
manager's culler through ``stats``. No I/O here.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from dataclasses import dataclass, field
import os
from typing import TYPE_CHECKING, Any

from nbformat import NotebookNode

from ._backend import KernelBackend
from ._displays import DisplayRegistry
from ._record import session_notebook, write_notebook
from ._result import ExecutionResult
from ._spill import SpillFile

if TYPE_CHECKING:
    from ._execute import Call
    from ._launch import KernelSource
    from ._options import SessionOptions


class Phase(str, enum.Enum):
    """Where a session is in its life; the value is what ``stats.status`` shows."""

    NOT_STARTED = "not started"  # no kernel yet, or the last (re)start failed: the next call starts one
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    CLOSED = "closed"


@dataclass(frozen=True)
class SessionStats:
    """A snapshot of what a session has done: wall-clock times and counters."""

    created: float
    last_used: float
    executions: int
    timeouts: int
    restarts: int
    deaths: int
    status: str  # "not started", "starting", "idle", "busy" or "closed"
    kernel_id: str | None


@dataclass(frozen=True)
class SessionHooks:
    """Internal seams for kernelexec's own callers of ``AsyncSession`` (not public API).

    - ``kernel_source``: where the session's kernels come from (the manager's warm pool);
      default: a new kernel launched for the session's options.
    - ``displays``: a display registry shared by all calls, as a notebook front end shares it
      across cells (``run_notebook``); default: one per call.
    """

    kernel_source: KernelSource | None = None
    displays: DisplayRegistry | None = None


@dataclass
class SessionState:
    """The mutable state behind a session's faces."""

    phase: Phase = Phase.NOT_STARTED
    kernel: KernelBackend | None = None
    call: Call | None = None
    execution_count: int = 0
    history: list[tuple[str, ExecutionResult]] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    counts: Counter[str] = field(default_factory=Counter)
    kernel_info: dict[str, Any] = field(default_factory=dict)  # the last kernel's kernel_info_reply
    # A request given up by a cancelled call (Ctrl-C): the next call lets it finish first, or the
    # kernel would abort the next request as queued behind an error.
    abandoned: Call | None = None
    # The kernel spill files of abandoned requests that outlived the grace: their kernel may still
    # create or write them until a later request of it ends (it runs one at a time) or it is gone.
    lingering_spills: list[SpillFile] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def discard_abandoned(self, *, still_running: bool = False) -> None:
        """Forget the abandoned call, and delete the files its kernel may have written withheld
        output to since, once the kernel is done with them: when its requests have ended or it is
        gone (``still_running``: the abandoned request has not, its file is kept till then)."""
        call, self.abandoned = self.abandoned, None
        spill = call.collector.spill if call is not None else None
        if isinstance(spill, SpillFile):
            self.lingering_spills.append(spill)
        if not still_running:
            spills, self.lingering_spills = self.lingering_spills, []
            for done in spills:
                done.close(keep=False)

    def enter(self, phase: Phase) -> None:
        """Move to ``phase``; a closed session stays closed."""
        if self.phase is not Phase.CLOSED:
            self.phase = phase

    def settle(self) -> None:
        """Back to rest after a call or a (re)start: idle with a kernel, else not started."""
        self.enter(Phase.IDLE if self.kernel is not None else Phase.NOT_STARTED)

    def record(self, code: str, result: ExecutionResult) -> None:
        self.history.append((code, result))
        self.last_used = time.time()
        self.counts.update(
            executions=1,
            timeouts=result.status == "timeout",
            deaths=result.status == "died",
            restarts=result.restarted,
        )

    def stats(self) -> SessionStats:
        return SessionStats(
            created=self.created,
            last_used=self.last_used,
            executions=self.counts["executions"],
            timeouts=self.counts["timeouts"],
            restarts=self.counts["restarts"],
            deaths=self.counts["deaths"],
            status=self.phase.value,
            kernel_id=self.kernel.kernel_id if self.kernel is not None else None,
        )


class SessionBase:
    """Options and read-only state, shared by ``Session`` and ``AsyncSession``; no I/O here."""

    _options: SessionOptions
    _state: SessionState

    @property
    def options(self) -> SessionOptions:
        """The options this session was created with."""
        return self._options

    @property
    def history(self) -> list[tuple[str, ExecutionResult]]:
        """Every ``(code, result)`` executed so far, oldest first."""
        return list(self._state.history)

    @property
    def notebook(self) -> NotebookNode:
        """The history as an nbformat v4 notebook: one code cell per call, with its outputs,
        execution count, timing (``metadata.execution``) and status (``metadata.kernelexec``)."""
        return session_notebook(self.history, self._options.kernel_name, self._state.kernel_info)

    def save_notebook(self, path: str | os.PathLike[str]) -> None:
        """Write ``notebook`` to ``path`` (a plain call on both faces: it only writes a file)."""
        write_notebook(self.notebook, path)

    @property
    def execution_count(self) -> int:
        """The kernel's execution counter after the last call (0 for a fresh kernel)."""
        return self._state.execution_count

    @property
    def kernel_id(self) -> str | None:
        """The id of the current kernel, or ``None`` before start and after shutdown."""
        kernel = self._state.kernel
        return kernel.kernel_id if kernel is not None else None

    @property
    def kernel_info(self) -> dict[str, Any]:
        """The current (or last) kernel's ``kernel_info_reply`` content; ``{}`` before start."""
        return self._state.kernel_info

    @property
    def language_info(self) -> dict[str, Any]:
        """The kernel's ``language_info`` (name, version, file extension, ...); ``{}`` before start."""
        return dict(self._state.kernel_info.get("language_info", {}))

    @property
    def is_alive(self) -> bool:
        """Whether the session has a running kernel."""
        kernel = self._state.kernel
        return kernel is not None and kernel.is_alive

    @property
    def closed(self) -> bool:
        """Whether ``shutdown()`` was called."""
        return self._state.closed

    @property
    def stats(self) -> SessionStats:
        """Counters and times: executions, timeouts, restarts, deaths, created, last used."""
        return self._state.stats()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("running" if self.is_alive else "not started")
        return f"<{type(self).__name__} {self._options.kernel_name} {state} kernel_id={self.kernel_id}>"
