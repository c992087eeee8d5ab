"""What every kernel process of ours shares, however it was made: channels read on the loop,
death learnt from a pidfd, a stderr file that explains a crash, a cgroup and a watchdog.

``LocalKernel`` (spawned by jupyter_client's ``KernelManager``) and ``ForkedKernel`` (forked from a
template or a checkpoint) are ``ProcessKernel``s; they differ in how they start, stop and are
interrupted, and in how they learn their exit status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import IO, Any

from ._backend import KernelDeath, KernelDied
from ._cgroups import KernelCgroup
from ._channels import ZmqChannels, open_pidfd
from ._containment import descendants, process_limit_for_root_unavailable
from ._errors import KernelStartError
from ._sandbox_start import SandboxView
from ._watchdog import OwnerDeathWatchdog
from ._wire import STDERR_KEEP_BYTES, Message

# Messages already sent by a kernel that just died may still be on their way through ZMQ.
DEATH_DRAIN_SECONDS = 0.02
# How long a death waits for its exit status when it comes from elsewhere (a fork server).
DEATH_STATUS_WAIT_SECONDS = 1.0
# Without a pidfd (non-Linux), how often to check whether the kernel process is alive.
EXIT_CHECK_SECONDS = 0.1
# The smallest memory_limit accepted when a memory cgroup enforces it. Measured (README,
# benchmarks/memory.py): a spawned kernel is charged about 50 MiB once ready and prepared (the
# smallest limit that started one was 51 MiB), a forked one about 22 MiB (23 MiB); the rest is
# headroom for the code.
MEMORY_CGROUP_MINIMUM = 64 * 2**20

log = logging.getLogger("kernelexec")


class ProcessKernel:
    """The parts of a local kernel backend that do not depend on how the process was made."""

    needs_nproc_limit = False  # set when max_processes must be enforced by the kernel itself
    has_fork_code = False  # whether the kernel holds the code that checkpoints it (``_checkpoints``)
    installed: str | None = None  # the install(...) call its kernelexec hooks were installed with
    limits_memory = False  # set when memory_limit is enforced by the kernel's memory cgroup

    def __init__(self, stderr_file: IO[bytes]) -> None:
        self._stderr_file = stderr_file
        self._channels: ZmqChannels | None = None
        self._pidfd: int | None = None
        self._exited_at: float | None = None
        self._closed = False
        self._watchdog: OwnerDeathWatchdog | None = None
        self._cgroup: KernelCgroup | None = None
        self._oom_kills_before_call = 0  # the cgroup's count only grows: a death compares with it
        self.info: dict[str, Any] = {}
        # A kernel in a sandbox that can fork copies (a sandboxed template's): see _sandbox_start.
        self.view: SandboxView | None = None

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def spill_directory(self) -> str | None:
        """A sandboxed kernel's directory for the output it withholds (see ``KernelBackend``)."""
        return None

    @property
    def is_alive(self) -> bool:
        raise NotImplementedError

    def returncode(self) -> int | None:
        """The process's exit status once it is known (negative: killed by that signal)."""
        raise NotImplementedError

    def death(self) -> KernelDeath:
        code = self.returncode()
        cgroup = self._cgroup
        if (
            cgroup is not None and cgroup.memory_limit and code in (None, -signal.SIGKILL)
            and cgroup.oom_kills() > self._oom_kills_before_call  # fmt: skip
        ):
            return KernelDeath(signal_number=signal.SIGKILL, detail=self.stderr_tail(),
                               cause=memory_limit_exceeded(cgroup.memory_limit))  # fmt: skip
        if code is not None and code < 0:
            return KernelDeath(signal_number=-code, detail=self.stderr_tail())
        if code is None and self._exit_status_comes_later():
            return KernelDeath(detail=f"the kernel process ended{format_detail(self.stderr_tail())}")
        return KernelDeath(exit_code=code, detail=self.stderr_tail())

    def _exit_status_comes_later(self) -> bool:
        """Whether the exit status reaches us apart from the process (see ``ForkedKernel``)."""
        return False

    def _watch_process(self, channels: ZmqChannels) -> None:
        """Start reading ``channels`` on this loop, and learn of the process's exit by pidfd."""
        self._channels = channels
        channels.watch(asyncio.get_running_loop())
        pid = self.pid
        self._pidfd = open_pidfd(pid) if pid is not None else None
        if self._pidfd is not None:
            channels.watch_fd(self._pidfd, self._on_exit)

    def request(self, channel: str, msg_type: str, content: dict[str, Any], parent: Message | None = None) -> str:
        assert self._channels is not None
        self._bound_stderr_file()
        if msg_type == "execute_request" and self._cgroup is not None and self._cgroup.memory_limit:
            self._oom_kills_before_call = self._cgroup.oom_kills()
        return self._channels.send(channel, msg_type, content, parent)


    async def receive(self, timeout: float | None) -> tuple[str, Message] | None:
        channels = self._channels
        if channels is None:
            raise KernelDied(KernelDeath(detail="the kernel was shut down"))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise KernelDied(KernelDeath(detail="the kernel was shut down"))
            item = channels.try_receive()
            if item is not None:
                return item
            if channels.any_ready():
                continue
            now = time.monotonic()
            if self._exited_at is None and self._pidfd is None and not self.is_alive:
                self._exited_at = now
            if self._exited_at is not None:  # death outranks the deadline: say why it ended
                drain = DEATH_DRAIN_SECONDS
                if self.returncode() is None and self._exit_status_comes_later():
                    drain = DEATH_STATUS_WAIT_SECONDS
                drain_left = self._exited_at + drain - now
                if drain_left <= 0:
                    raise KernelDied(self.death())
                await channels.wait(drain_left)
                continue
            if deadline is not None and now >= deadline:
                return None
            wait = None if deadline is None else deadline - now
            if self._pidfd is None:
                wait = EXIT_CHECK_SECONDS if wait is None else min(wait, EXIT_CHECK_SECONDS)
            await channels.wait(wait)


    def _bound_stderr_file(self) -> None:
        """Keep the stderr file small, checked once per request. A Python kernel prepared by
        kernelexec bounds its own copy (see ``_kernel_side``); others write to it directly.

        Emptying it while the kernel writes on leaves a sparse file: its size grows, its disk use
        does not. What the kernel writes last (before it dies) is still at the end.
        """
        try:
            if os.fstat(self._stderr_file.fileno()).st_blocks * 512 > STDERR_KEEP_BYTES:
                os.ftruncate(self._stderr_file.fileno(), 0)
        except (OSError, ValueError):
            pass


    def stderr_tail(self, max_bytes: int = 2000) -> str:
        """The end of what the kernel process wrote to its stderr."""
        try:
            size = self._stderr_file.seek(0, os.SEEK_END)
            self._stderr_file.seek(max(0, size - max_bytes))
            return self._stderr_file.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""


    async def _await_stdin_connection(self, timeout: float) -> None:
        """The kernel answers on shell and iopub by now, so the stdin handshake is done or nearly."""
        assert self._channels is not None
        deadline = time.monotonic() + timeout
        while not self._channels.stdin_connected():
            if time.monotonic() > deadline:
                raise KernelStartError(
                    f"the kernel's stdin channel did not connect within {timeout:g} s; "
                    "raise startup_timeout if the machine is busy."
                )
            await asyncio.sleep(0.001)


    def _on_exit(self) -> None:
        self._exited_at = time.monotonic()


    async def _await_exit(self, timeout: float) -> None:
        """Wait (on the pidfd, no polling) until the kernel process has exited."""
        assert self._channels is not None
        deadline = time.monotonic() + timeout
        while self._exited_at is None and time.monotonic() < deadline:
            await self._channels.wait(deadline - time.monotonic())
            while self._channels.try_receive() is not None:
                pass  # output of an exiting kernel is of no use now


    def _close_channels(self) -> None:
        if self._channels is not None:
            self._channels.close()
            self._channels = None


    def _make_cgroup(self, max_processes: int | None, memory_limit: int | None) -> None:
        """A cgroup for the kernel where one can be made (see ``_cgroups``), before it starts."""
        self._cgroup = KernelCgroup.create(
            f"kernelexec-{self.kernel_id}", max_processes=max_processes, memory_limit=memory_limit
        )
        self._check_limits(max_processes, memory_limit)
        if self._cgroup is not None and self._cgroup.memory_limit is not None:
            refuse_a_limit_below_minimum(self._cgroup.memory_limit)

    def _contain(self, max_processes: int | None, memory_limit: int | None, pid: int | None = None) -> None:
        """Put the started kernel (or ``pid``, the process it descends from: a sandbox's pid 1)
        in its cgroup; say how its limits are enforced."""
        pid = pid or self.pid
        assert pid is not None
        if self._cgroup is not None:
            self._cgroup.add(pid)
            if not self._cgroup.paths:
                self._cgroup = None
        self._check_limits(max_processes, memory_limit)
        if memory_limit is not None:
            how = f"its memory cgroup {self._cgroup.memory_path}" if self.limits_memory else "RLIMIT_AS"
            log.debug("kernel %s: memory_limit=%d enforced by %s", self.kernel_id, memory_limit, how)

    def _check_limits(self, max_processes: int | None, memory_limit: int | None) -> None:
        """Which limits the kernel must set on itself (no cgroup controller for them)."""
        cgroup = self._cgroup
        self.limits_memory = cgroup is not None and cgroup.memory_limit is not None
        self.needs_nproc_limit = max_processes is not None and (cgroup is None or cgroup.pids_path is None)
        if self.needs_nproc_limit and os.geteuid() == 0:
            if cgroup is not None:
                cgroup.kill_and_remove()
                self._cgroup = None
            raise process_limit_for_root_unavailable()

    def _strays(self) -> dict[int, bytes]:
        """Without a cgroup, what the code started outside the kernel's process group is found
        through the kernel: it must be looked up while the kernel is still its parent."""
        pid = self.pid
        if self._cgroup is not None or pid is None or not self.is_alive:
            return {}
        return descendants(pid)

    def _release_containment(self) -> None:
        """After the kernel is gone: remove its cgroup (killing what is left), stop the watchdog,
        close the pidfd and the stderr file."""
        if self._cgroup is not None:
            self._cgroup.kill_and_remove()
            self._cgroup = None
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._stderr_file.close()


def memory_limit_exceeded(memory_limit: int) -> str:
    return (
        f"the kernel used more than its memory_limit of {memory_limit / 2**20:g} MiB and was "
        "stopped by the out-of-memory killer"
    )


def refuse_a_limit_below_minimum(memory_limit: int) -> None:
    if memory_limit < MEMORY_CGROUP_MINIMUM:
        raise KernelStartError(
            f"memory_limit={memory_limit / 2**20:g} MiB is too small to start a kernel: a kernel "
            f"needs about {MEMORY_CGROUP_MINIMUM // 2**20} MiB of memory to start (memory_limit "
            "is enforced by a memory cgroup here). Raise it, or leave it unset."
        )


def format_detail(detail: str) -> str:
    return f" Its last words on stderr:\n{detail}" if detail else ""
