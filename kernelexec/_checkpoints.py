"""Checkpoints: frozen copies of a kernel, made by fork(), that new kernels are forked from.

``take_checkpoint`` asks a live kernel (a local Python kernel, spawned or forked) to make a copy
of itself that serves the fork protocol (``_fork_side.checkpoint``); the copy is blocked in
``poll()`` and uses no CPU while held. ``restore_kernel`` forks a kernel from it: a full kernel
with the state the source had when the checkpoint was taken. A checkpoint is a process of ours:
contained like a kernel (an owner-death watchdog), closed explicitly, by its session's
``shutdown()``, or when its session holds more than ``max_checkpoints``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
import warnings
from collections.abc import Coroutine
from typing import Any, Callable, TypeVar

from ._backend import KernelBackend
from ._cgroups import KernelCgroup
from ._errors import ForkNotSupported, ForkWarning, KernelexecError, KernelStartError
from ._fork_client import FORK_SOURCE, ForkServer, runtime_path
from ._forked_kernel import ForkedKernel
from ._launch import prepare_kernel, run_private, self_install
from ._options import SessionOptions
from ._process_kernel import ProcessKernel
from ._watchdog import OwnerDeathWatchdog

T = TypeVar("T")
log = logging.getLogger("kernelexec")

# Run in the kernel, silently, in a namespace of its own. The fork code is compiled once per
# kernel, and sent only to a kernel that may not have it: kernels forked from a template or a
# checkpoint have it already (a cell of 40 kB costs IPython milliseconds to transform).
_CHECKPOINT_CODE = """
shell, source = __import__("IPython").get_ipython(), SOURCE
fork = getattr(shell, "_kernelexec_fork", None)
if fork is None and source is None:
    print('{"missing": "fork code"}')
else:
    if fork is None:
        fork = {"__name__": "__kernelexec_fork__"}
        exec(compile(source, "<kernelexec-fork>", "exec"), fork)
        shell._kernelexec_fork = fork
    fork["checkpoint"](PATH)
"""


class AsyncCheckpoint:
    """A frozen copy of a session's kernel; ``await session.restore(cp)`` forks a kernel from it.

    Close it with ``await cp.aclose()`` (or ``async with``); its session closes it at shutdown.
    """

    def __init__(self, server: ForkServer, execution_count: int, watchdog: OwnerDeathWatchdog | None,
                 forget: Callable[[AsyncCheckpoint], None], cgroup: KernelCgroup | None = None,
                 has_hooks: bool = False) -> None:  # fmt: skip
        self.server = server
        self.has_hooks = has_hooks  # the source had kernelexec's hooks: the copy has their code
        self._cgroup = cgroup
        self.execution_count = execution_count
        self.created = time.time()
        self._watchdog = watchdog
        self._forget = forget
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The process holding the copy."""
        return self.server.pid

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pid={self.pid}"
        return f"<{type(self).__name__} execution_count={self.execution_count} {state}>"

    async def __aenter__(self) -> AsyncCheckpoint:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the copy's process (kernels restored from it live on)."""
        if self._closed:
            return
        self._closed = True
        self._forget(self)
        try:
            await self.server.close(stop_server=True)
        finally:
            if self._cgroup is not None:
                self._cgroup.kill_and_remove()
                self._cgroup = None
            with contextlib.suppress(OSError):  # the server removes it, unless killed first
                os.unlink(self.server.path)
            if self._watchdog is not None:
                self._watchdog.stop()
                self._watchdog = None


class Checkpoint:
    """The synchronous face of an ``AsyncCheckpoint`` (from ``Session.checkpoint()``).

    >>> with s.checkpoint() as cp:
    ...     s.execute("del data")
    ...     s.restore(cp)
    """

    def __init__(self, checkpoint: AsyncCheckpoint, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self.async_checkpoint = checkpoint
        self._run = run

    execution_count = property(lambda self: self.async_checkpoint.execution_count)
    created = property(lambda self: self.async_checkpoint.created)
    pid = property(lambda self: self.async_checkpoint.pid)
    closed = property(lambda self: self.async_checkpoint.closed)

    def __repr__(self) -> str:
        return repr(self.async_checkpoint).replace("AsyncCheckpoint", "Checkpoint", 1)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """End the copy's process (kernels restored from it live on)."""
        if not self.closed:
            self._run(self.async_checkpoint.aclose())


def refuse_unforkable(kernel: KernelBackend) -> ProcessKernel:
    """``kernel``, if it is a local Python kernel; ``ForkNotSupported`` otherwise."""
    if not isinstance(kernel, ProcessKernel):
        raise ForkNotSupported(
            "this session's kernel runs on a gateway: only local kernels can be forked or "
            "checkpointed (start the session without gateway_url)"
        )
    language = kernel.info.get("language_info", {}).get("name", "unknown")
    if language != "python":
        raise ForkNotSupported(f"only Python kernels can be forked or checkpointed; this one is {language!r}")
    if getattr(kernel, "sandboxed", False) and kernel.view is None:
        raise ForkNotSupported(
            "this sandboxed kernel was spawned (launcher='spawn'): copies made in its sandbox would "
            "die with it. Use the default launcher, which forks sandboxed kernels from a sandboxed template"
        )
    return kernel


async def take_checkpoint(kernel: KernelBackend, options: SessionOptions, execution_count: int,
                          forget: Callable[[AsyncCheckpoint], None],
                          kernel_done: Callable[[], None] = lambda: None) -> AsyncCheckpoint:  # fmt: skip
    """Make a frozen copy of ``kernel`` (idle); warns (``ForkWarning``) of threads it cannot copy.
    ``kernel_done`` is called once the kernel's part is over (the kernel may take requests)."""
    kernel = refuse_unforkable(kernel)
    view = kernel.view
    path = runtime_path("kx-cp-", ".sock", view.directory if view is not None else None)
    answer: dict[str, Any] = {}
    try:
        if kernel.has_fork_code:
            answer = await _run_for_answer(kernel, _checkpoint_code(path, None), options)
        if "pid" not in answer:
            answer = await _run_for_answer(kernel, _checkpoint_code(path, FORK_SOURCE), options)
            kernel.has_fork_code = True
        kernel_done()
        if view is not None and "pid" in answer:  # the sandbox's pid, as we see it
            outer = view.outer_pid(answer.pop("pid"))
            if outer is None:
                raise KernelStartError("the checkpoint's copy of the kernel exited at once (see the kernel's stderr)")
            answer["pid"] = outer
        server = await ForkServer.connect(path, options.startup_timeout, view)
    except BaseException:  # a copy made but not taken over (cancelled, unreachable) must go
        if "pid" in answer:
            with contextlib.suppress(OSError):
                os.kill(answer["pid"], signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    cgroup = _own_cgroup(answer["pid"], options)
    watchdog = OwnerDeathWatchdog.start(answer["pid"], [path], cgroup.paths if cgroup else [])
    checkpoint = AsyncCheckpoint(server, execution_count, watchdog, forget, cgroup, kernel.installed is not None)
    if answer.get("threads"):
        try:
            warnings.warn(ForkWarning(
                f"threads {', '.join(map(repr, answer['threads']))} were running in the kernel; they "
                "do not exist in its copies (only the thread that runs the code is copied)"
            ), stacklevel=4)  # fmt: skip
        except BaseException:  # the warning raised (warnings as errors): nobody gets the copy
            await checkpoint.aclose()
            raise
    return checkpoint


def _checkpoint_code(path: str, source: str | None) -> str:
    code = _CHECKPOINT_CODE.replace("SOURCE", repr(source)).replace("PATH", repr(path))
    return f"exec(compile({code!r}, '<kernelexec>', 'exec'), {{'__name__': '__kernelexec__'}})"


def _own_cgroup(pid: int, options: SessionOptions) -> KernelCgroup | None:
    """Move the copy out of its source kernel's cgroups, which go (killing all in them) with the
    kernel; in cgroups of its own (limited as a kernel is) it goes only with the checkpoint."""
    cgroup = KernelCgroup.create(
        f"kernelexec-checkpoint-{uuid.uuid4()}", max_processes=None, memory_limit=options.memory_limit
    )
    if cgroup is not None:
        cgroup.add(pid)
    return cgroup if cgroup is not None and cgroup.paths else None


async def restore_kernel(checkpoint: AsyncCheckpoint, options: SessionOptions, witnesses: list[ForkServer]) -> ForkedKernel:
    """A new kernel forked from ``checkpoint``, with kernelexec's hooks installed afresh (by the
    copy itself, with its source's code, where it has it)."""
    if checkpoint.closed:
        raise KernelStartError(f"{checkpoint!r} is closed; take a new checkpoint")
    install = self_install(options) if checkpoint.has_hooks else None
    kernel = await ForkedKernel.start(checkpoint.server, options, witnesses=witnesses, install=install)
    try:
        await prepare_kernel(kernel, options, startup_code=False)
    except BaseException:
        await kernel.shutdown(graceful=False)
        raise
    return kernel


async def _run_for_answer(kernel: KernelBackend, code: str, options: SessionOptions) -> dict[str, Any]:
    """Run the checkpoint code silently; its JSON answer is the last line it printed."""
    call = await run_private(kernel, code, options, "kernelexec's checkpoint code")
    lines = [line for node in call.collector.outputs() if node.get("name") == "stdout"
             for line in node.text.splitlines() if line.startswith("{")]  # fmt: skip
    return json.loads(lines[-1])


class SessionCheckpoints:
    """A session's checkpoints: the open ones (at most ``max_checkpoints``, oldest closed first),
    and the one ``keep_state_on_restart`` keeps of the state before the call in flight."""

    def __init__(self, options: SessionOptions) -> None:
        self._options = options
        self.open: list[AsyncCheckpoint] = []
        self._before_call: AsyncCheckpoint | None = None  # the state now, while it is not stale
        self._discard: list[AsyncCheckpoint] = []
        self._pending: asyncio.Future[None] | None = None  # a copy being made in the background
        self._kernel_free: asyncio.Event | None = None  # ... whose request has ended in the kernel
        self._generation = 0  # of the state: a copy finished after a change is stale

    async def take(self, kernel: KernelBackend, execution_count: int) -> AsyncCheckpoint:
        checkpoint = await take_checkpoint(kernel, self._options, execution_count, self._forget)
        self.open.append(checkpoint)
        while len(self.open) > self._options.max_checkpoints:
            oldest = self.open[0]
            warnings.warn(
                f"closing the oldest checkpoint ({oldest!r}): the session holds at most "
                f"max_checkpoints={self._options.max_checkpoints}", ResourceWarning, stacklevel=3,
            )  # fmt: skip
            await oldest.aclose()
        return checkpoint

    async def before_call(self, kernel: KernelBackend, execution_count: int) -> None:
        """Keep a copy of the state before a call, unless the one kept (or being made) is of
        that state."""
        await self.settle(kernel_only=True)
        if self._pending is not None and not self._pending.done():
            return
        if self._before_call is not None and not self._before_call.closed:
            return
        await self.close_stale()
        self._before_call = await take_checkpoint(kernel, self._options, execution_count, lambda _: None)

    def after_call(self, kernel: KernelBackend, execution_count: int) -> None:
        """The call changed the state: copy it in the background, off the next call's path
        (an agent thinks between calls); ``settle()`` waits for it."""
        self.state_changed()
        self._kernel_free = asyncio.Event()
        self._pending = asyncio.ensure_future(self._refresh(kernel, execution_count, self._generation, self._kernel_free))

    async def settle(self, *, kernel_only: bool = False) -> None:
        """Wait for a copy being made in the background: nothing else may read the kernel's
        messages meanwhile (they would be taken from the copy's request). ``kernel_only``: wait
        only until the copy's request has ended in the kernel (a call may run while the rest
        of the copy is made). A cancellation of the waiter does not cancel the copy."""
        pending, free = self._pending, self._kernel_free
        if pending is None:
            return
        if kernel_only and free is not None:
            freed = asyncio.ensure_future(free.wait())
            try:
                await asyncio.wait([pending, freed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                freed.cancel()
            return
        await asyncio.wait([pending])
        if self._pending is pending:
            self._pending = None

    @property
    def active(self) -> bool:
        """Whether any copy of this session is open or being made (they live on its loop)."""
        making = self._pending is not None and not self._pending.done()
        return bool(self.open or self._before_call or self._discard or making)

    async def _refresh(self, kernel: KernelBackend, execution_count: int, generation: int, free: asyncio.Event) -> None:
        try:
            copy = await take_checkpoint(kernel, self._options, execution_count, lambda _: None, kernel_done=free.set)
        except (KernelexecError, ConnectionError, OSError) as error:  # the next call tries again
            log.debug("could not keep a copy of the state after a call: %s", error)
        else:
            if generation == self._generation:
                self._before_call = copy
            else:  # the state changed while the copy was being made (a restore, a restart)
                self._discard.append(copy)
        finally:
            free.set()
        await self.close_stale()

    def state_changed(self) -> None:
        """The kernel ran code (or is new): the copy kept, or being made, is of an older state."""
        self._generation += 1
        stale, self._before_call = self._before_call, None
        if stale is not None:
            self._discard.append(stale)

    async def copy_before_call(self) -> AsyncCheckpoint | None:
        """The copy of the state before the call in flight (waiting for it to be made)."""
        pending = self._pending
        if pending is not None:
            await asyncio.wait([pending])
        return self._before_call

    async def close_stale(self) -> None:
        stale, self._discard = self._discard, []
        for checkpoint in stale:
            await checkpoint.aclose()

    async def close_all(self) -> None:
        await self.settle()
        self.state_changed()
        for checkpoint in list(self.open):
            await checkpoint.aclose()
        await self.close_stale()

    def _forget(self, checkpoint: AsyncCheckpoint) -> None:
        if checkpoint in self.open:
            self.open.remove(checkpoint)
