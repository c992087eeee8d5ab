"""A warm pool of prepared kernels, so a new or restarted session gets one at once."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ._backend import KernelBackend
from ._launch import Launcher
from ._options import SessionOptions

log = logging.getLogger("kernelexec")


class KernelPool:
    """Keeps ``size`` kernels started and prepared for ``options``, refilled in the background.

    ``take()`` hands out a ready kernel at once; when none is ready it claims the oldest start
    already under way (sooner than a new one), and only then starts one itself. Every kernel
    taken is replaced by a new background start. Use it from one event loop.
    """

    def __init__(self, options: SessionOptions, size: int) -> None:
        self.options = options
        self.size = size
        self._launcher = Launcher(options)
        self._ready: deque[KernelBackend] = deque()
        self._starting: deque[asyncio.Task[KernelBackend]] = deque()
        self._closed = False

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def fill(self) -> None:
        """Start kernels in the background until ready + starting reaches ``size``."""
        while not self._closed and len(self._ready) + len(self._starting) < self.size:
            task = asyncio.create_task(self._launcher.launch(), name="kernelexec-pool-start")
            self._starting.append(task)
            task.add_done_callback(self._on_started)

    async def take(self) -> KernelBackend:
        """A prepared kernel: from the pool if possible, else started now."""
        try:
            while self._ready:
                kernel = self._ready.popleft()
                if kernel.is_alive:
                    return kernel
                await kernel.shutdown(graceful=False)  # died while waiting in the pool
            if self._starting:
                return await self._starting.popleft()  # claimed: _on_started leaves it alone
            return await self._launcher.launch()
        finally:
            self.fill()

    async def close(self) -> None:
        """Stop background starts and shut down every kernel still in the pool."""
        self._closed = True
        starting, self._starting = list(self._starting), deque()
        ready, self._ready = list(self._ready), deque()
        for task in starting:
            task.cancel()
        await _shutdown_all(ready)
        if starting:
            # wait() neither raises the tasks' errors nor cancels them again: a CancelledError
            # here is close()'s own, and goes on to the caller.
            await asyncio.wait(starting)
        # Those that started before the cancel reached them.
        await _shutdown_all([t.result() for t in starting if not t.cancelled() and t.exception() is None])
        await self._launcher.close()

    def _on_started(self, task: asyncio.Task[KernelBackend]) -> None:
        # A task claimed by take() or close() is theirs, even if it finished before they claimed
        # it (remove_done_callback cannot stop a callback already scheduled).
        if task not in self._starting:
            return
        self._starting.remove(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # No retry loop: the next take() starts a kernel itself and reports the error.
            log.warning("a pooled kernel failed to start: %s", error)
            return
        self._ready.append(task.result())


async def _shutdown_all(kernels: list[KernelBackend]) -> None:
    """Kill every kernel; one that fails to go is logged and does not keep the others alive."""
    outcomes = await asyncio.gather(
        *(kernel.shutdown(graceful=False) for kernel in kernels), return_exceptions=True
    )
    for kernel, outcome in zip(kernels, outcomes):
        if isinstance(outcome, Exception):
            log.error("could not shut down pooled kernel %s", kernel.kernel_id, exc_info=outcome)
