"""Session and AsyncSession: one kernel, one lifetime, and the execute path.

One ``execute()`` flows one way: caller -> session (lock, deadline) -> kernel backend
(execute_request) -> collector (iopub and shell messages of that request until reply *and* idle)
-> result -> history. ``AsyncSession`` holds all of the logic; ``Session`` is the same object seen
through the shared event-loop thread, one line per method.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

import humanize
from nbformat import NotebookNode

from ._collector import OutputCallback, OutputCollector
from ._displays import DisplayRegistry
from ._env import InheritEnv
from ._errors import KernelStartError, SessionClosed
from ._kernel import KernelBackend, KernelDeath
from ._launch import DEADLINE, Deadline, KernelSource, execute_content, launch_kernel, pump
from ._loop import LoopThread
from ._options import InputHandler, SessionOptions, check_timeout
from ._record import session_notebook, write_notebook
from ._result import ErrorInfo, ExecutionResult, Status
from ._traceback import error_payload, frames_from_payload

T = TypeVar("T")
log = logging.getLogger("kernelexec")

# How long an interrupt waits for the kernel to say it runs the code before it is sent anyway.
INTERRUPT_START_WAIT_SECONDS = 0.5

@dataclass
class _Call:
    """The execute request in flight, so that ``interrupt()`` can mark it."""

    collector: OutputCollector
    interrupted: bool = False
    timed_out: bool = False
    pending_interrupt: asyncio.Task[None] | None = None  # waits for the code to start


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


@dataclass
class _SessionState:
    """What a session knows at a moment, read by every face of the API."""

    kernel: KernelBackend | None = None
    closed: bool = False
    starting: bool = False
    execution_count: int = 0
    history: list[tuple[str, ExecutionResult]] = field(default_factory=list)
    call: _Call | None = None
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    counts: Counter[str] = field(default_factory=Counter)
    kernel_info: dict[str, Any] = field(default_factory=dict)  # the last kernel's kernel_info_reply
    # Shared by all calls when set, as a notebook front end shares it across cells (run_notebook).
    displays: DisplayRegistry | None = None

    def record(self, result: ExecutionResult) -> None:
        self.last_used = time.time()
        self.counts.update(
            executions=1,
            timeouts=result.status == "timeout",
            deaths=result.status == "died",
            restarts=result.restarted,
        )

    def stats(self) -> SessionStats:
        if self.closed:
            status = "closed"
        elif self.call is not None:
            status = "busy"
        elif self.starting:
            status = "starting"
        else:
            status = "idle" if self.kernel is not None else "not started"
        return SessionStats(
            created=self.created,
            last_used=self.last_used,
            executions=self.counts["executions"],
            timeouts=self.counts["timeouts"],
            restarts=self.counts["restarts"],
            deaths=self.counts["deaths"],
            status=status,
            kernel_id=self.kernel.kernel_id if self.kernel is not None else None,
        )


class _SessionBase:
    """Options and read-only state, shared by ``Session`` and ``AsyncSession``; no I/O here."""

    _state: _SessionState

    def __init__(
        self,
        kernel_name: str = "python3",
        *,
        timeout: float = 60.0,
        interrupt_grace: float = 3.0,
        startup_timeout: float = 60.0,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str | None] | None = None,
        inherit_env: InheritEnv = "scrub",
        startup_code: str | None = None,
        max_output_bytes: int = 1_000_000,
        memory_limit: int | None = None,
        max_processes: int | None = None,
        on_output: OutputCallback | None = None,
        spill_dir: str | os.PathLike[str] | None = None,
        input_handler: InputHandler | None = None,
        gateway_url: str | None = None,
        gateway_token: str | None = None,
        gateway_headers: Mapping[str, str] | None = None,
        gateway_validate_cert: bool = True,
    ) -> None:
        self._setup(
            SessionOptions(
                kernel_name=kernel_name, timeout=timeout, interrupt_grace=interrupt_grace,
                startup_timeout=startup_timeout, cwd=cwd, env=env, inherit_env=inherit_env,
                startup_code=startup_code, max_output_bytes=max_output_bytes,
                memory_limit=memory_limit, max_processes=max_processes, on_output=on_output,
                spill_dir=spill_dir,
                input_handler=input_handler,
                gateway_url=gateway_url, gateway_token=gateway_token,
                gateway_headers=gateway_headers, gateway_validate_cert=gateway_validate_cert,
            )  # fmt: skip
        )

    def _setup(self, options: SessionOptions) -> None:
        raise NotImplementedError

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


class AsyncSession(_SessionBase):
    """A persistent kernel driven with ``async``/``await``.

    >>> async with AsyncSession(timeout=30) as s:
    ...     r = await s.execute("x = 21 * 2; x")
    ...     r.result
    '42'

    Use one AsyncSession from one event loop. Calls run one at a time, in arrival order.
    """

    def _setup(self, options: SessionOptions) -> None:
        self._options = options
        self._state = _SessionState()
        self._lock = asyncio.Lock()
        self._kernel_source: KernelSource = lambda: launch_kernel(options)

    @classmethod
    def _from_options(cls, options: SessionOptions) -> AsyncSession:
        session = cls.__new__(cls)
        session._setup(options)
        return session

    async def __aenter__(self) -> AsyncSession:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    async def start(self) -> AsyncSession:
        """Start the kernel (a no-op when it is running). Raises ``KernelStartError``."""
        async with self._lock:
            await self._ensure_kernel()
        return self

    async def execute(
        self, code: str, *, timeout: float | None = None, on_output: OutputCallback | None = None
    ) -> ExecutionResult:
        """Run ``code`` in the kernel and return its result; code errors are in the result.

        ``timeout`` (default: the session's) bounds the run time of the code itself. At the
        timeout the kernel is interrupted; if it does not answer within ``interrupt_grace`` it is
        restarted. ``on_output`` is called with each output node as it arrives.
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        time_limit = check_timeout(timeout, self._options.timeout)
        async with self._lock:
            kernel = await self._ensure_kernel()
            result = await self._run(kernel, code, time_limit, on_output or self._options.on_output)
            self._state.history.append((code, result))
            self._state.record(result)
            return result

    async def interrupt(self) -> None:
        """Interrupt the code running now (its result gets status ``"interrupted"``)."""
        call, kernel = self._state.call, self._state.kernel
        if call is not None and kernel is not None:
            call.interrupted = True
            await _interrupt(call, kernel)

    async def restart(self) -> None:
        """Replace the kernel with a fresh one; all state in the kernel is lost.

        A call running meanwhile (in another thread or task) ends at once with status ``died``.
        Raises ``KernelStartError`` if no new kernel could be started (the next call tries again).
        """
        state = self._state
        self._raise_if_closed()
        busy_kernel = state.kernel if state.call is not None else None
        if busy_kernel is not None:  # code that ignores interrupts must not hold the restart up
            await busy_kernel.shutdown(graceful=False)
        async with self._lock:
            self._raise_if_closed()
            if busy_kernel is None or state.kernel is busy_kernel or state.kernel is None:
                await self._replace_kernel(graceful=busy_kernel is None, raise_start_error=True)
                state.counts["restarts"] += 1
            # else the call we ended has replaced the kernel (and counted the restart)

    async def shutdown(self) -> None:
        """Stop the kernel and release everything; a call in flight ends with status ``died``."""
        state = self._state
        if state.closed:
            return
        state.closed = True
        if state.call is not None and state.kernel is not None:
            await state.kernel.shutdown()
        async with self._lock:
            kernel, state.kernel = state.kernel, None
            if kernel is not None:
                await kernel.shutdown()

    # The kernel's lifetime

    def _raise_if_closed(self) -> None:
        if self._state.closed:
            raise SessionClosed(
                "this session was shut down and cannot run code; create a new Session"
            )

    async def _ensure_kernel(self) -> KernelBackend:
        self._raise_if_closed()
        if self._state.kernel is None:
            await self._start_kernel()
        assert self._state.kernel is not None
        return self._state.kernel

    async def _start_kernel(self) -> None:
        """Start the session's next kernel (every start and restart goes through here)."""
        state = self._state
        state.starting = True
        try:
            kernel = await self._kernel_source()
        finally:
            state.starting = False
        if state.closed:  # shut down while the kernel started
            await kernel.shutdown(graceful=False)
            self._raise_if_closed()
        state.kernel = kernel
        state.execution_count = 0
        state.kernel_info = kernel.info
        state.last_used = time.time()  # idle from now: a slow start or restart is not idleness

    async def _replace_kernel(self, *, graceful: bool = False, raise_start_error: bool = False) -> bool:
        """Swap in a fresh kernel; ``False`` if none could be started (the next call retries).

        A hung or dead kernel is killed at once; ``graceful`` lets a healthy one exit cleanly
        (flushing its files) first.
        """
        old, self._state.kernel = self._state.kernel, None
        if self._state.closed:
            if old is not None:
                await old.shutdown(graceful=graceful)
            return False
        # The old kernel goes while the new one starts: a gateway takes seconds to delete a hung one.
        stopping = asyncio.create_task(old.shutdown(graceful=graceful)) if old is not None else None
        try:
            await self._start_kernel()
        except SessionClosed:
            if raise_start_error:
                raise
            return False
        except KernelStartError:
            if raise_start_error:
                raise
            log.exception("could not restart the kernel; the next call will try again")
            return False
        finally:
            if stopping is not None:
                await asyncio.shield(stopping)
        return True

    # The execute path

    async def _run(
        self, kernel: KernelBackend, code: str, time_limit: float, on_output: OutputCallback | None
    ) -> ExecutionResult:
        """Run one request through the timeout ladder: wait, interrupt, wait the grace, restart."""
        started = time.monotonic()
        allow_stdin = self._options.input_handler is not None
        msg_id = kernel.request("shell", "execute_request", execute_content(code, allow_stdin=allow_stdin))
        collector = OutputCollector(
            msg_id,
            max_output_bytes=self._options.max_output_bytes,
            on_output=on_output,
            open_spill=self._spill_opener(),
            displays=self._state.displays,
        )
        call = self._state.call = _Call(collector)
        try:
            try:
                outcome = await pump(kernel, collector, started + time_limit, self._options.input_handler)
                if outcome is DEADLINE:
                    call.timed_out = True
                    grace_ends = time.monotonic() + self._options.interrupt_grace  # interrupting takes time
                    await _interrupt(call, kernel)
                    outcome = await pump(kernel, collector, grace_ends, self._options.input_handler)
            except asyncio.CancelledError:
                await asyncio.shield(_interrupt_quietly(kernel))
                raise
            finally:
                self._state.call = None
                await _drop_pending_interrupt(call)
            restarted = outcome is not None and await self._replace_kernel()
            return self._result(code, call, outcome, time.monotonic() - started, time_limit, restarted)
        finally:
            _discard_spill(collector)  # a call that ends without a result leaves no spill file

    def _spill_opener(self) -> Any:
        spill_dir = self._options.spill_dir
        if spill_dir is None:
            return None
        prefix = f"kernelexec-{len(self._state.history) + 1}-"

        def open_spill() -> TextIO:
            return tempfile.NamedTemporaryFile(
                "w", dir=spill_dir, prefix=prefix, suffix=".txt", delete=False,
                encoding="utf-8", errors="replace",
            )  # fmt: skip

        return open_spill

    def _result(
        self,
        code: str,
        call: _Call,
        outcome: KernelDeath | Deadline | None,
        exec_time: float,
        time_limit: float,
        restarted: bool,
    ) -> ExecutionResult:
        collector = call.collector
        reply = collector.reply or {}
        status, error = _outcome(call, outcome, reply, time_limit, restarted, self._state.closed)
        count = reply.get("execution_count")
        if isinstance(count, int) and not restarted:
            self._state.execution_count = count
        return ExecutionResult(
            status=status,
            outputs=collector.outputs(),
            error=error,
            exec_time=exec_time,
            execution_count=count if isinstance(count, int) else None,
            time_limit=time_limit,
            restarted=restarted,
            truncated_bytes=collector.truncated_bytes,
            output_path=_close_spill(collector),
            code=code,
            timing=collector.timing,
        )


class Session(_SessionBase):
    """A persistent kernel with a synchronous API.

    >>> with Session(timeout=30) as s:
    ...     s.execute("import math\\nx = math.sqrt(2)")
    ...     s.execute("x * 2").result
    '2.8284271247461903'

    Safe to share between threads: calls run one at a time, in arrival order. The work happens
    on kernelexec's event-loop thread, which is shared by all sessions and joined when the last
    one shuts down.
    """

    def _setup(self, options: SessionOptions) -> None:
        self._options = options
        self._async = AsyncSession._from_options(options)
        self._state = self._async._state
        self._loop_lock = threading.Lock()
        self._loop_thread: LoopThread | None = None
        self._owner_loop: LoopThread | None = None  # set when a manager owns the loop thread
        self._calls_in_flight = 0

    @classmethod
    def _attached(cls, session: AsyncSession, loop_thread: LoopThread) -> Session:
        """The sync face of a manager's ``AsyncSession``, on the manager's loop thread."""
        attached = cls.__new__(cls)
        attached._setup(session.options)
        attached._async, attached._state = session, session._state
        attached._owner_loop = loop_thread
        return attached

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def start(self) -> Session:
        """Start the kernel (a no-op when it is running). Raises ``KernelStartError``."""
        self._call(self._async.start())
        return self

    def execute(
        self, code: str, *, timeout: float | None = None, on_output: OutputCallback | None = None
    ) -> ExecutionResult:
        """Run ``code`` and return its result; see ``AsyncSession.execute``."""
        return self._call(self._async.execute(code, timeout=timeout, on_output=on_output))

    def interrupt(self) -> None:
        """Interrupt the code running now (its result gets status ``"interrupted"``)."""
        self._call(self._async.interrupt())

    def restart(self) -> None:
        """Replace the kernel with a fresh one; all state in the kernel is lost."""
        self._call(self._async.restart())

    def shutdown(self) -> None:
        """Stop the kernel and release everything, including kernelexec's loop thread."""
        if self._state.closed and self._loop_thread is None:
            return
        self._call(self._async.shutdown())

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the shared loop thread, which is held only while it is needed."""
        if self._owner_loop is not None:
            if self._state.closed:
                coroutine.close()
                self._async._raise_if_closed()
            return self._owner_loop.run(coroutine)
        with self._loop_lock:
            if self._loop_thread is None:
                if self._state.closed:
                    coroutine.close()
                    self._async._raise_if_closed()
                self._loop_thread = LoopThread.acquire()
            loop_thread = self._loop_thread
            self._calls_in_flight += 1
        try:
            return loop_thread.run(coroutine)
        finally:
            with self._loop_lock:
                self._calls_in_flight -= 1
                if not self._calls_in_flight and self._state.kernel is None:
                    self._loop_thread = None
                    loop_thread.release()


def _outcome(
    call: _Call,
    outcome: KernelDeath | Deadline | None,
    reply: dict[str, Any],
    time_limit: float,
    restarted: bool,
    closed: bool,
) -> tuple[Status, ErrorInfo | None]:
    """The status of a finished call and the error that explains it."""
    payload = error_payload(reply.get("payload", []))
    frames = list(frames_from_payload(payload))
    exc_info = dict(payload.get("exc_info", {})) if payload else {}
    if isinstance(outcome, KernelDeath):
        if closed:
            fate = "the session was shut down"
        else:
            fate = "the kernel was restarted" if restarted else "no new kernel could be started yet"
        evalue = f"{outcome.describe()} during this call; {fate} and its state is lost"
        detail = outcome.detail.splitlines()[-20:] if outcome.detail else []
        return "died", ErrorInfo("KernelDied", evalue, detail)
    traceback = list(reply.get("traceback", []))
    if call.timed_out:
        limit = humanize.naturaldelta(time_limit)
        return "timeout", ErrorInfo(
            "TimeoutError", f"Execution exceeded the time limit of {limit}", traceback, frames
        )
    if not reply:  # only a request an interrupt hit just before its code ends without one (see pump)
        return "interrupted", ErrorInfo(
            "KeyboardInterrupt", "interrupted before the code started; the kernel did not run it"
        )
    status = reply.get("status")
    if status == "ok":
        return "ok", None
    if status == "aborted":
        return "error", ErrorInfo("Aborted", "the kernel aborted this request without running it")
    ename, evalue = reply.get("ename", "Error"), reply.get("evalue", "")
    error = ErrorInfo(ename, evalue, traceback, frames, exc_info)
    if call.interrupted and ename == "KeyboardInterrupt":
        return "interrupted", error
    return "error", error


def _close_spill(collector: OutputCollector) -> str | None:
    """Close the call's spill file; keep it only when output was really truncated."""
    spill = collector.spill_file
    if spill is None:
        return None
    spill.close()
    if collector.truncated_bytes:
        return spill.name
    os.unlink(spill.name)
    return None


def _discard_spill(collector: OutputCollector) -> None:
    """Close and delete the call's spill file unless ``_close_spill`` handed it to a result."""
    spill = collector.spill_file
    if spill is None or spill.closed:
        return
    with contextlib.suppress(OSError):  # the error that ended the call may be a full disk
        spill.close()
    with contextlib.suppress(OSError):
        os.unlink(spill.name)


async def _interrupt(call: _Call, kernel: KernelBackend) -> None:
    """Interrupt the call's code once the kernel runs it.

    An early interrupt goes wrong: ipykernel ignores SIGINT until it takes the request, and one
    that arrives after it took the request but before the code runs makes it drop the request
    without a reply. So until the kernel says it started (``execute_input``, or a first output),
    the interrupt waits in a task of its own while the call goes on reading; a kernel that does
    not say so within ``INTERRUPT_START_WAIT_SECONDS`` is interrupted anyway. ipykernel still
    has a few steps to take after ``execute_input``: a request dropped there ends soon after its
    idle status (see ``pump``). While one interrupt waits, more for the same call add nothing.
    """
    if not call.collector.started:
        if call.pending_interrupt is None:
            call.pending_interrupt = asyncio.create_task(_interrupt_once_started(call, kernel))
        return
    call.collector.interrupt_sent = True
    await kernel.interrupt()


async def _interrupt_once_started(call: _Call, kernel: KernelBackend) -> None:
    gives_up_at = time.monotonic() + INTERRUPT_START_WAIT_SECONDS
    while not call.collector.started and time.monotonic() < gives_up_at:
        await asyncio.sleep(0.002)
    call.collector.interrupt_sent = True
    await kernel.interrupt()


async def _drop_pending_interrupt(call: _Call) -> None:
    """The call is over: an interrupt still waiting for it must not hit the next one."""
    task = call.pending_interrupt
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])  # unlike awaiting the task, a cancellation of ours still raises
    if not task.cancelled() and task.exception() is not None:
        log.debug("interrupting the kernel failed", exc_info=task.exception())


async def _interrupt_quietly(kernel: KernelBackend) -> None:
    try:
        await kernel.interrupt()
    except Exception:
        log.debug("interrupting a cancelled call failed", exc_info=True)
