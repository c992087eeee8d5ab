"""The event loop behind the synchronous API.

One daemon thread runs one asyncio loop for every synchronous ``Session`` and ``SessionManager``
in the process. It is started by the first user, shared by counting, and stopped and joined when
the last user releases it, so a program that closes its sessions is left with no thread of ours.
Each synchronous method is one line: hand a coroutine to the loop and wait for its result.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine
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
