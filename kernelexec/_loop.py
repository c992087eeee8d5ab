"""The event loop behind the synchronous API.

One daemon thread runs one asyncio loop for every synchronous ``Session`` and ``SessionManager``
in the process. It is started by the first user, shared by counting, and stopped and joined when
the last user releases it, so a program that closes its sessions is left with no thread of ours.
Each user holds it through a ``LoopLease``; each synchronous method is one line: hand a
coroutine to the lease and wait for its result.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """A running event loop in a thread of its own, shared by reference counting."""

    _lock = threading.Lock()
    _shared: LoopThread | None = None

    def __init__(self) -> None:
        self.users = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kernelexec-loop", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls) -> LoopThread:
        """The shared loop thread, started if needed; pair every call with ``release()``."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
                atexit.register(cls._stop_at_exit)
            cls._shared.users += 1
            return cls._shared

    def release(self) -> None:
        """Give up one use; the last one stops the loop and joins its thread."""
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            if LoopThread._shared is self:
                LoopThread._shared = None
                atexit.unregister(self._stop_at_exit)
        self._stop()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result in the calling thread."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError(
                "a synchronous kernelexec call was made from kernelexec's own event loop thread "
                "(for example from an on_output callback); use the Async API there instead"
            )
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt in the caller: cancel the work so it does not run on unseen.
            if not future.done():
                future.cancel()
                try:
                    future.result(timeout=10)
                except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError, Exception):
                    pass
            raise

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())  # join its threads
            self.loop.close()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()

    @classmethod
    def _stop_at_exit(cls) -> None:
        with cls._lock:
            shared, cls._shared = cls._shared, None
        if shared is not None:
            shared._stop()


class LoopLease:
    """One owner's hold on the shared loop thread: taken by the first call, given back when the
    owner no longer needs it (``keep()`` is false once no call is in flight).

    ``Session`` keeps it while its kernel runs; ``SessionManager`` until it is closed. A call
    that would have to take the thread for an owner that is closed is refused with ``refuse()``
    (which raises): a closed owner never starts a thread again.
    """

    def __init__(self, keep: Callable[[], bool], refuse_closed: Callable[[], None]) -> None:
        self._keep = keep
        self._refuse_closed = refuse_closed
        self._lock = threading.Lock()
        self._thread: LoopThread | None = None
        self._in_flight = 0

    @property
    def held(self) -> bool:
        return self._thread is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop of the thread held now, if any."""
        return self._thread.loop if self._thread is not None else None

    def hold(self) -> None:
        """Take the loop thread now (given back as usual, after a call, once ``keep()`` is false)."""
        with self._lock:
            if self._thread is None:
                self._thread = LoopThread.acquire()

    def run(self, coroutine: Coroutine[Any, Any, T], *, closing: bool = False) -> T:
        """Run ``coroutine`` on the loop thread, taking it if needed. ``closing`` lets the
        owner's own close run (once) even when no thread is held."""
        with self._lock:
            if self._thread is None:
                if not closing:
                    try:
                        self._refuse_closed()
                    except BaseException:
                        coroutine.close()
                        raise
                self._thread = LoopThread.acquire()
            thread = self._thread
            self._in_flight += 1
        try:
            return thread.run(coroutine)
        finally:
            self._leave(thread)

    def _leave(self, thread: LoopThread) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight or self._thread is not thread or self._keep():
                return
            self._thread = None
        thread.release()
