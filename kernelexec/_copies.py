"""The kernel copies an ``AsyncSession`` makes: checkpoints, restores and forks.

A mixin of ``AsyncSession`` (``_session``), kept apart because it is one job: every copy is a
checkpoint of the idle kernel (``_checkpoints``), and a kernel restored from it replaces the
session's (``restore``), starts a new session (``fork``), or resumes the state from before a
call that needed a restart (``keep_state_on_restart``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._backend import KernelBackend
from ._checkpoints import AsyncCheckpoint, Checkpoint, SessionCheckpoints, restore_kernel, take_checkpoint
from ._errors import KernelStartError

if TYPE_CHECKING:
    from ._execute import Call
    from ._launch import Launcher
    from ._options import SessionOptions
    from ._state import SessionState

S = TypeVar("S", bound="SessionCopies")
log = logging.getLogger("kernelexec")


class SessionCopies:
    """Checkpoints, restores and forks of a session's kernel."""

    _options: SessionOptions
    _state: SessionState
    _lock: asyncio.Lock
    _launcher: Launcher
    _checkpoints: SessionCheckpoints

    async def _ensure_kernel(self) -> KernelBackend:
        raise NotImplementedError

    def _raise_if_closed(self) -> None:
        raise NotImplementedError

    @classmethod
    def from_options(cls: type[S], options: SessionOptions, *, _hooks: Any = None) -> S:
        raise NotImplementedError

    @property
    def checkpoints(self) -> list[AsyncCheckpoint]:
        """The checkpoints of this session that are open, oldest first."""
        return list(self._checkpoints.open)

    async def checkpoint(self, *, timeout: float | None = None) -> AsyncCheckpoint:
        """A frozen copy of the kernel's state now, to ``restore()`` any number of times.

        Waits for a running call to end (at most ``timeout``). Local Python kernels only
        (``ForkNotSupported`` otherwise); ``ForkWarning`` names threads the copy does not have.
        """
        async with self._locked(timeout):
            kernel = await self._ensure_kernel()
            return await self._checkpoints.take(kernel, self._state.execution_count)

    async def restore(self, checkpoint: AsyncCheckpoint | Checkpoint, *, timeout: float | None = None) -> None:
        """Replace the kernel with a copy of ``checkpoint`` (this session's, or its fork's)."""
        copy = checkpoint.async_checkpoint if isinstance(checkpoint, Checkpoint) else checkpoint
        async with self._locked(timeout):
            self._raise_if_closed()
            kernel = await restore_kernel(copy, self._options, self._launcher.witnesses())
            await self._swap_kernel(kernel, copy.execution_count)
            self._checkpoints.state_changed()

    async def fork(self: S, *, timeout: float | None = None) -> S:
        """A new, started session with a copy of this one's kernel: the same options, variables,
        imports, working directory and execution count; independent from here on."""
        async with self._locked(timeout):
            source = await self._ensure_kernel()
            count = self._state.execution_count
            copy = await take_checkpoint(source, self._options, count, lambda _: None)
            try:
                kernel = await restore_kernel(copy, self._options, self._launcher.witnesses())
            finally:
                await copy.aclose()
        child = type(self).from_options(self._options)
        child._launcher.share_template(self._launcher)
        await child._swap_kernel(kernel, count)
        return child

    @contextlib.asynccontextmanager
    async def _locked(self, timeout: float | None) -> AsyncIterator[None]:
        """The session's lock, waiting for a running call at most ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the session was still running a call after {timeout:g} s") from None
        try:
            await self._checkpoints.settle()
            yield
        finally:
            self._lock.release()

    async def _swap_kernel(self, kernel: KernelBackend, execution_count: int) -> None:
        state = self._state
        old, state.kernel = state.kernel, kernel
        state.execution_count, state.kernel_info = execution_count, kernel.info
        state.settle()
        try:
            if old is not None:
                await old.shutdown(graceful=False)
        finally:
            state.discard_abandoned()  # its kernel is gone

    async def _restore_state_before(self, call: Call) -> bool:
        """After a call that needs a restart: resume from the copy kept before it, if any."""
        copy = await self._checkpoints.copy_before_call()
        if copy is None or self._state.closed:
            return False
        try:
            kernel = await restore_kernel(copy, self._options, self._launcher.witnesses())
        except KernelStartError:
            log.exception("could not restore the state from before the call; starting afresh")
            return False
        await self._swap_kernel(kernel, copy.execution_count)
        return True

