"""SessionManager and AsyncSessionManager: many named sessions, a warm pool, idle culling."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from ._collector import OutputCallback
from ._errors import InvalidArgument, SessionClosed, TooManySessions, UnknownSession
from ._loop import LoopLease
from ._options import SessionOptions, with_options_signature
from ._options import session_options as _options
from ._pool import KernelPool
from ._result import ExecutionResult
from ._session import AsyncSession, Session
from ._state import SessionHooks, SessionStats

T = TypeVar("T")
log = logging.getLogger("kernelexec")
_MANAGER_CLOSED = "this session manager was closed; create a new one"


@dataclass(frozen=True)
class SessionInfo(SessionStats):
    """One row of ``SessionManager.list()``: the session id and its stats."""

    id: str = ""


@with_options_signature
class AsyncSessionManager:
    """Named sessions created on demand, served from a pool of pre-started kernels.

    >>> async with AsyncSessionManager(pool_size=2, timeout=30) as m:
    ...     await m.execute("agent-42", "y = 1")
    ...     (await m.execute("agent-42", "y + 1")).result
    '2'

    Keyword arguments besides ``pool_size``, ``max_sessions`` and ``idle_timeout`` are session
    options (``timeout``, ``cwd``, ``env``, ...) for every session; ``session(id, **options)``
    overrides them for one session when it is created. The pool serves sessions whose kernel
    options (kernel name, cwd, env, startup code, memory limit) are the manager's; a kernel
    restart in such a session (timeout escalation, death, ``restart()``) also takes a pooled kernel.
    """

    def __init__(
        self,
        *,
        pool_size: int = 2,
        max_sessions: int = 64,
        idle_timeout: float | None = 600.0,
        **session_options: Any,
    ) -> None:
        if not isinstance(pool_size, int) or pool_size < 0:
            raise InvalidArgument(f"pool_size must be an int >= 0, not {pool_size!r}")
        if not isinstance(max_sessions, int) or max_sessions < 1:
            raise InvalidArgument(f"max_sessions must be an int >= 1, not {max_sessions!r}")
        if idle_timeout is not None and not (isinstance(idle_timeout, (int, float)) and idle_timeout > 0):
            raise InvalidArgument(f"idle_timeout must be positive seconds or None, not {idle_timeout!r}")
        kernel_name = session_options.pop("kernel_name", "python3")
        self.options = _options(type(self).__name__, kernel_name, session_options)
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._pool = KernelPool(self.options, pool_size)
        self._sessions: dict[str, AsyncSession] = {}
        self._starting: dict[str, asyncio.Task[AsyncSession]] = {}
        self._culler: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    async def __aenter__(self) -> AsyncSessionManager:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> AsyncSessionManager:
        """Start filling the pool and watching for idle sessions (done on first use anyway)."""
        self._raise_if_closed()
        if not self._started:
            self._started = True
            self._pool.fill()
            if self.idle_timeout is not None:
                self._culler = asyncio.create_task(self._cull_idle(), name="kernelexec-culler")
        return self

    async def session(self, session_id: str, **options: Any) -> AsyncSession:
        """The session called ``session_id``, created and started if needed.

        An existing session comes back at once, even while it runs code, so that another task
        can interrupt it; only a session still being created waits for its kernel.
        """
        await self.start()
        session = self._sessions.get(session_id)
        if session is not None and not session.closed:
            if options:
                raise InvalidArgument(
                    f"session {session_id!r} already exists; options apply only when a session is "
                    "created (close it first to recreate it with other options)"
                )
            starting = self._starting.get(session_id)
            return session if starting is None else await asyncio.shield(starting)
        session = self._create(session_id, options)
        # One start per new session, shared by everyone who asks for it meanwhile.
        starting = asyncio.create_task(self._start_new(session_id, session), name="kernelexec-session-start")
        self._starting[session_id] = starting
        starting.add_done_callback(functools.partial(self._start_done, session_id))
        return await asyncio.shield(starting)

    def get(self, session_id: str) -> AsyncSession:
        """The existing session ``session_id``, at once: it never waits for code the session runs.

        Raises ``UnknownSession`` (a ``KeyError``) if the manager holds no such session. Use it to
        reach a session that may be busy, e.g. ``m.get("agent-42").interrupt()``.
        """
        self._raise_if_closed()
        session = self._sessions.get(session_id)
        if session is None or session.closed:
            names = ", ".join(map(repr, list(self._sessions))) or "none"  # list(): one atomic copy
            raise UnknownSession(
                f"this manager holds no session {session_id!r} (sessions: {names}); "
                "session(id) creates one"
            )
        return session

    async def interrupt(self, session_id: str) -> None:
        """Interrupt the code running now in session ``session_id`` (see ``get``)."""
        await self.get(session_id).interrupt()

    async def execute(
        self,
        session_id: str,
        code: str,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """Run ``code`` in the session ``session_id`` (created on first use)."""
        session = await self.session(session_id)
        return await session.execute(code, timeout=timeout, on_output=on_output)

    async def fork(self, source_id: str, new_id: str, *, timeout: float | None = None) -> AsyncSession:
        """A new session ``new_id`` with a copy of session ``source_id``'s kernel (see
        ``AsyncSession.fork``); waits for a call running in the source (at most ``timeout``)."""
        source = self.get(source_id)
        if new_id in self._sessions and not self._sessions[new_id].closed:
            raise InvalidArgument(f"session {new_id!r} already exists; close it first or pick another id")
        self._check_room()
        child = await source.fork(timeout=timeout)
        if self._closed or (new_id in self._sessions and not self._sessions[new_id].closed):
            await child.shutdown()
            self._raise_if_closed()
            raise InvalidArgument(f"session {new_id!r} was created while the fork was made")
        self._sessions[new_id] = child
        return child

    async def close(self, session_id: str | None = None) -> None:
        """Close one session (no-op if unknown), or with no id the manager and everything in it."""
        if session_id is not None:
            session = self._sessions.pop(session_id, None)
            if session is not None:
                await session.shutdown()
            return
        if self._closed:
            return
        self._closed = True
        if self._culler is not None:
            self._culler.cancel()
            await asyncio.gather(self._culler, return_exceptions=True)
        sessions, self._sessions = self._sessions, {}
        try:
            # One session failing to shut down must not keep the others, or the pool, alive.
            outcomes = await asyncio.gather(
                *(session.shutdown() for session in sessions.values()), return_exceptions=True
            )
            for session_id, outcome in zip(sessions, outcomes):
                if isinstance(outcome, BaseException):
                    log.error("could not shut down session %r", session_id, exc_info=outcome)
            await asyncio.gather(*self._starting.values(), return_exceptions=True)
        finally:
            await self._pool.close()

    def list(self) -> list[SessionInfo]:
        """Every session with its stats (created, last used, executions, timeouts, ...)."""
        return [
            SessionInfo(id=session_id, **vars(session.stats))
            for session_id, session in self._sessions.items()
        ]

    @property
    def pool_ready(self) -> int:
        """How many pre-started kernels are waiting in the pool now."""
        return self._pool.ready_count

    def _check_room(self) -> None:
        live = sum(not s.closed for s in self._sessions.values())
        if live >= self.max_sessions:
            raise TooManySessions(
                f"this manager already holds max_sessions={self.max_sessions} sessions; close "
                "some with close(session_id), or create the manager with a larger max_sessions"
            )

    def _create(self, session_id: str, options: dict[str, Any]) -> AsyncSession:
        self._check_room()
        session_options = self.options.with_changes(**options) if options else self.options
        pooled = self._pool.size and session_options.kernel_key() == self.options.kernel_key()
        hooks = SessionHooks(kernel_source=self._pool.take if pooled else None)
        session = AsyncSession.from_options(session_options, _hooks=hooks)
        self._sessions[session_id] = session
        return session

    async def _start_new(self, session_id: str, session: AsyncSession) -> AsyncSession:
        try:
            await session.start()
            return session
        except BaseException:
            # A session that never started is not kept: the next session(id) tries afresh.
            if self._sessions.get(session_id) is session:
                del self._sessions[session_id]
            await session.shutdown()  # closed, so whoever still holds it cannot start a kernel
            raise

    def _start_done(self, session_id: str, task: asyncio.Task[AsyncSession]) -> None:
        if self._starting.get(session_id) is task:
            del self._starting[session_id]
        if not task.cancelled():
            task.exception()  # retrieved: the callers were told, or none is left to tell

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise SessionClosed(_MANAGER_CLOSED)

    async def _cull_idle(self) -> None:
        """Shut down sessions idle past ``idle_timeout``; sleeps until the next one is due."""
        assert self.idle_timeout is not None
        while True:
            now = time.time()
            next_due = now + self.idle_timeout
            for session_id, session in list(self._sessions.items()):
                if self._sessions.get(session_id) is not session:
                    continue  # closed or replaced while another was being closed
                stats = session.stats
                if stats.status in ("busy", "starting"):  # a call, or a kernel (re)starting
                    continue
                last_used = stats.last_used  # also set when a kernel start or restart ends
                due = last_used + self.idle_timeout
                if due > now:
                    next_due = min(next_due, due)
                    continue
                log.info("closing session %r: idle for %.0f s", session_id, now - last_used)
                try:
                    await self.close(session_id)
                except Exception:  # one bad shutdown must not end culling for good
                    log.exception("could not close idle session %r", session_id)
            await asyncio.sleep(max(next_due - time.time(), 0.01))


@with_options_signature
class SessionManager:
    """The synchronous face of ``AsyncSessionManager``; thread-safe.

    >>> with SessionManager(pool_size=2, max_sessions=64, idle_timeout=600) as m:
    ...     s = m.session("agent-42")        # get or create, from the warm pool
    ...     m.execute("agent-42", "y = 1")   # shorthand
    ...     m.close("agent-42")
    """

    def __init__(
        self,
        *,
        pool_size: int = 2,
        max_sessions: int = 64,
        idle_timeout: float | None = 600.0,
        **session_options: Any,
    ) -> None:
        self._async = AsyncSessionManager(
            pool_size=pool_size, max_sessions=max_sessions, idle_timeout=idle_timeout, **session_options
        )
        self._lock = threading.Lock()
        self._closed = False
        # The loop thread is held from the first call until close.
        self._lease = LoopLease(keep=lambda: not self._closed, refuse_closed=self._raise_if_closed)
        self._faces: dict[str, tuple[AsyncSession, Session]] = {}

    def __enter__(self) -> SessionManager:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def options(self) -> SessionOptions:
        return self._async.options

    @property
    def pool_ready(self) -> int:
        """How many pre-started kernels are waiting in the pool now."""
        return self._async.pool_ready

    def start(self) -> SessionManager:
        """Start filling the pool (done on first use anyway)."""
        self._call(self._async.start())
        return self

    def session(self, session_id: str, **options: Any) -> Session:
        """The session called ``session_id``, created and started if needed.

        An existing session comes back at once, even while another thread runs code in it.
        """
        async_session = self._call(self._async.session(session_id, **options))
        with self._lock:
            return self._face(session_id, async_session)

    def get(self, session_id: str) -> Session:
        """The existing session ``session_id``, at once: it never waits for code the session runs.

        Raises ``UnknownSession`` (a ``KeyError``) if the manager holds no such session.

        >>> m.get("agent-42").interrupt()   # from another thread, while agent-42 is stuck
        """
        with self._lock:
            self._raise_if_closed()
            return self._face(session_id, self._async.get(session_id))

    def interrupt(self, session_id: str) -> None:
        """Interrupt the code running now in session ``session_id`` (see ``get``)."""
        self.get(session_id).interrupt()

    def fork(self, source_id: str, new_id: str, *, timeout: float | None = None) -> Session:
        """A new session ``new_id`` with a copy of session ``source_id``'s kernel."""
        child = self._call(self._async.fork(source_id, new_id, timeout=timeout))
        with self._lock:
            return self._face(new_id, child)

    def execute(
        self,
        session_id: str,
        code: str,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """Run ``code`` in the session ``session_id`` (created on first use)."""
        return self._call(self._async.execute(session_id, code, timeout=timeout, on_output=on_output))

    def close(self, session_id: str | None = None) -> None:
        """Close one session, or with no id the manager and everything in it."""
        if session_id is not None:
            self._call(self._async.close(session_id))
            with self._lock:
                self._faces.pop(session_id, None)
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._faces.clear()
        self._lease.run(self._async.close(), closing=True)

    def list(self) -> list[SessionInfo]:
        """Every session with its stats (created, last used, executions, timeouts, ...)."""
        return self._call(_as_coroutine(self._async.list))

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coroutine.close()
            self._raise_if_closed()
        return self._lease.run(coroutine)

    def _face(self, session_id: str, session: AsyncSession) -> Session:
        """The sync face of ``session``, made once; call with ``self._lock`` held."""
        self._raise_if_closed()
        known = self._faces.get(session_id)
        if known is not None and known[0] is session:
            return known[1]
        face = Session.over(session, self._lease)
        self._faces[session_id] = (session, face)
        return face

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise SessionClosed(_MANAGER_CLOSED)



async def _as_coroutine(function: Any) -> Any:
    """Run a plain function on the loop thread, where the manager's state lives."""
    return function()
