"""Session and AsyncSession: one kernel, one lifetime.

One ``execute()`` flows one way: caller -> session (lock, kernel) -> ``_execute.run_request``
(send, collect, the timeout ladder) -> outcome -> the session restarts the kernel if the outcome
needs it -> ``ExecutionResult`` -> history. ``AsyncSession`` holds all of the logic; ``Session``
is the same object seen through a lease on the shared event-loop thread, one line per method.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar


from ._backend import KernelBackend
from ._checkpoints import Checkpoint, SessionCheckpoints
from ._copies import SessionCopies
from ._collector import OutputCallback
from ._errors import KernelStartError, SessionClosed
from ._execute import Call, Outcome, pump, result_of, run_request
from ._launch import KernelSource, Launcher
from ._loop import LoopLease
from ._options import SessionOptions, check_timeout, session_options, with_options_signature
from ._result import ExecutionResult
from ._spill import SpillFile
from ._state import Phase, SessionBase, SessionHooks, SessionState

T = TypeVar("T")
log = logging.getLogger("kernelexec")
_CLOSED = "this session was shut down and cannot run code; create a new Session"


@with_options_signature
class AsyncSession(SessionCopies, SessionBase):
    """A persistent kernel driven with ``async``/``await``.

    >>> async with AsyncSession(timeout=30) as s:
    ...     r = await s.execute("x = 21 * 2; x")
    ...     r.result
    '42'

    Use one AsyncSession from one event loop. Calls run one at a time, in arrival order. The
    options are those of ``SessionOptions``.
    """

    def __init__(self, kernel_name: str = "python3", *, _hooks: SessionHooks | None = None, **options: Any) -> None:
        self._setup(session_options(type(self).__name__, kernel_name, options), _hooks)

    @classmethod
    def from_options(cls, options: SessionOptions, *, _hooks: SessionHooks | None = None) -> AsyncSession:
        """A session configured with ``options`` (e.g. another session's ``options``)."""
        session = cls.__new__(cls)
        session._setup(options, _hooks)
        return session

    def _setup(self, options: SessionOptions, hooks: SessionHooks | None) -> None:
        hooks = hooks or SessionHooks()
        self._options = options
        self._state = SessionState()
        self._lock = asyncio.Lock()
        self._displays = hooks.displays
        self._launcher = Launcher(options)
        self._kernel_source: KernelSource = hooks.kernel_source or self._launcher.launch
        self._checkpoints = SessionCheckpoints(options)

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
            await self._checkpoints.settle(kernel_only=True)
            kernel = await self._ensure_kernel()
            await self._finish_abandoned(kernel)
            keep_state = self._options.keep_state_on_restart
            if keep_state:
                await self._checkpoints.before_call(kernel, self._state.execution_count)
            result = await self._run(kernel, code, time_limit, on_output or self._options.on_output)
            self._state.record(code, result)
            if keep_state and not result.state_restored and self._state.kernel is not None:
                self._checkpoints.after_call(self._state.kernel, self._state.execution_count)
            return result

    async def interrupt(self) -> None:
        """Interrupt the code running now (its result gets status ``"interrupted"``)."""
        call = self._state.call
        if call is not None:
            call.interrupted = True
            await call.interrupt()

    async def restart(self) -> None:
        """Replace the kernel with a fresh one; all state in the kernel is lost.

        A call running meanwhile (in another thread or task) ends at once with status ``died``.
        Raises ``KernelStartError`` if no new kernel could be started (the next call tries again).
        """
        state = self._state
        self._raise_if_closed()
        busy_kernel = state.kernel if state.call is not None else None
        if busy_kernel is not None:  # code that ignores interrupts must not hold the restart up
            state.call.ended_by_restart = True  # type: ignore[union-attr]
            await busy_kernel.shutdown(graceful=False)
        async with self._lock:
            self._raise_if_closed()
            await self._checkpoints.settle()
            if busy_kernel is None or state.kernel is busy_kernel or state.kernel is None:
                await self._replace_kernel(graceful=busy_kernel is None, raise_start_error=True)
                state.counts["restarts"] += 1
                self._checkpoints.state_changed()
            # else the call we ended has replaced the kernel (and counted the restart)

    async def shutdown(self) -> None:
        """Stop the kernel and release everything; a call in flight ends with status ``died``."""
        state = self._state
        if state.closed:
            return
        state.enter(Phase.CLOSED)
        if state.call is not None and state.kernel is not None:
            await state.kernel.shutdown()
        async with self._lock:
            await self._checkpoints.settle()  # a copy being made must not be cut in two
            kernel, state.kernel = state.kernel, None
            try:
                if kernel is not None:
                    await kernel.shutdown()
            finally:
                state.discard_abandoned()
                await self._checkpoints.close_all()
                await self._launcher.close()

    @property
    def is_running(self) -> bool:
        """Whether the session holds a kernel now (started, not shut down)."""
        return self._state.kernel is not None

    def needs_loop(self) -> bool:
        """Whether something of this session lives on its event loop (a kernel, checkpoints)."""
        return self.is_running or self._checkpoints.active

    def raise_if_closed(self) -> None:
        """Raise ``SessionClosed`` if the session was shut down."""
        self._raise_if_closed()

    # The kernel's lifetime

    def _raise_if_closed(self) -> None:
        if self._state.closed:
            raise SessionClosed(_CLOSED)

    async def _ensure_kernel(self) -> KernelBackend:
        self._raise_if_closed()
        if self._state.kernel is None:
            await self._start_kernel()
        assert self._state.kernel is not None
        return self._state.kernel

    async def _start_kernel(self) -> None:
        """Start the session's next kernel (every start and restart goes through here)."""
        state = self._state
        state.enter(Phase.STARTING)
        try:
            kernel = await self._kernel_source()
        except BaseException:
            await self._launcher.close()  # a session that never starts holds no template
            raise
        finally:
            state.settle()
        if state.closed:  # shut down while the kernel started
            await kernel.shutdown(graceful=False)
            self._raise_if_closed()
        state.kernel = kernel
        state.execution_count = 0
        state.kernel_info = kernel.info
        state.settle()
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
            self._state.discard_abandoned()  # its kernel is gone
        return True

    # The execute path

    async def _run(
        self, kernel: KernelBackend, code: str, time_limit: float, on_output: OutputCallback | None
    ) -> ExecutionResult:
        """Send ``code``, run it through the ladder, restart the kernel if the outcome says so."""
        state, options = self._state, self._options
        spill = None
        if options.spill_dir:
            spill = SpillFile(options.spill_dir, len(state.history) + 1, kernel_directory=kernel.spill_directory)
        bound = None
        if options.bound_output_in_kernel and options.gateway_url is None:  # its disk is not ours
            bound = {"max_output_bytes": options.max_output_bytes, "spill_path": spill.kernel_path if spill else None}
        call = Call.send(
            kernel, code, input_handler=options.input_handler, max_output_bytes=options.max_output_bytes,
            on_output=on_output, spill=spill, displays=self._displays, output_bound=bound,
        )  # fmt: skip
        state.call = call
        state.enter(Phase.BUSY)
        outcome: Outcome | None = None
        try:
            outcome = await run_request(call, time_limit, options.interrupt_grace)
        finally:
            state.call = None
            state.settle()
            if outcome is None:  # cancelled: the kernel still finishes the request
                state.abandoned = call
                self._checkpoints.state_changed()
                if spill is not None:
                    spill.close(keep=False)
        state.discard_abandoned()  # this request ended: so did any the kernel ran before it
        state_restored = (
            outcome.needs_restart and not call.ended_by_restart and await self._restore_state_before(call)
        )
        restarted = state_restored or (outcome.needs_restart and await self._replace_kernel())
        if not state_restored:
            self._checkpoints.state_changed()
        count = call.collector.reply.get("execution_count") if call.collector.reply else None
        if isinstance(count, int) and not restarted:
            state.execution_count = count
        path = spill.close(keep=call.collector.truncated_bytes > 0) if spill is not None else None
        return result_of(
            outcome, code, restarted=restarted, closed=state.closed, output_path=path,
            state_restored=state_restored,
        )  # fmt: skip

    async def _finish_abandoned(self, kernel: KernelBackend) -> None:
        """Let a request given up by a cancelled call end before the next is sent.

        ipykernel aborts every request queued behind one that failed (the interrupted one); it is
        given the interrupt grace to end, and then the next request goes anyway.
        """
        call, unfinished = self._state.abandoned, None
        if call is not None and call.kernel is kernel:
            unfinished = await pump(call, time.monotonic() + self._options.interrupt_grace)
            if unfinished is not None:
                log.debug("a request given up earlier did not end within the grace: %r", unfinished)
        self._state.discard_abandoned(still_running=unfinished is not None)


@with_options_signature
class Session(SessionBase):
    """A persistent kernel with a synchronous API.

    >>> with Session(timeout=30) as s:
    ...     s.execute("import math\\nx = math.sqrt(2)")
    ...     s.execute("x * 2").result
    '2.8284271247461903'

    Safe to share between threads: calls run one at a time, in arrival order. The work happens
    on kernelexec's event-loop thread, which is shared by all sessions and joined when the last
    one shuts down. The options are those of ``SessionOptions``.
    """

    def __init__(self, kernel_name: str = "python3", *, _hooks: SessionHooks | None = None, **options: Any) -> None:
        session = AsyncSession(kernel_name, _hooks=_hooks, **options)
        self._attach(session, LoopLease(keep=session.needs_loop, refuse_closed=session.raise_if_closed))
        self._own_lease = True

    @classmethod
    def over(cls, session: AsyncSession, lease: LoopLease) -> Session:
        """The synchronous face of ``session``, run through ``lease`` (a manager's loop)."""
        face = cls.__new__(cls)
        face._attach(session, lease)
        face._own_lease = False
        return face

    def _attach(self, session: AsyncSession, lease: LoopLease) -> None:
        self._async = session
        self._options = session.options
        self._state = session._state
        self._lease = lease

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def async_session(self) -> AsyncSession:
        """The ``AsyncSession`` this face runs (for asyncio code sharing the session)."""
        return self._async

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
        if self.closed and not (self._own_lease and self._lease.held):
            return
        self._call(self._async.shutdown())

    @property
    def checkpoints(self) -> list[Checkpoint]:
        """The checkpoints of this session that are open, oldest first."""
        return [Checkpoint(copy, self._call) for copy in self._async.checkpoints]

    def checkpoint(self, *, timeout: float | None = None) -> Checkpoint:
        """A frozen copy of the kernel's state now; see ``AsyncSession.checkpoint``."""
        return Checkpoint(self._call(self._async.checkpoint(timeout=timeout)), self._call)

    def restore(self, checkpoint: Checkpoint, *, timeout: float | None = None) -> None:
        """Replace the kernel with a copy of ``checkpoint``."""
        self._call(self._async.restore(checkpoint, timeout=timeout))

    def fork(self, *, timeout: float | None = None) -> Session:
        """A new, started session with a copy of this one's kernel; see ``AsyncSession.fork``."""
        child = self._call(self._async.fork(timeout=timeout))
        face = type(self).__new__(type(self))
        lease = LoopLease(keep=child.needs_loop, refuse_closed=child.raise_if_closed)
        lease.hold()  # the child's kernel lives on this loop: it must not stop with the parent
        face._attach(child, lease)
        face._own_lease = True
        return face

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine that uses ``async_session`` on this session's loop thread."""
        return self._call(coroutine)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if not self._own_lease and self.closed:  # a manager's session: its loop is the manager's
            coroutine.close()
            self._async.raise_if_closed()
        return self._lease.run(coroutine)
