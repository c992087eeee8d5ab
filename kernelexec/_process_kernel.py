"""What every kernel process of ours shares, however it was made: channels read on the loop,
death learnt from a pidfd, a stderr file that explains a crash, a cgroup and a watchdog.

``LocalKernel`` (spawned by jupyter_client's ``KernelManager``) and ``ForkedKernel`` (forked from a
template or a checkpoint) are ``ProcessKernel``s; they differ in how they start, stop and are
interrupted, and in how they learn their exit status.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import IO, Any

from ._backend import KernelDeath, KernelDied
from ._channels import ZmqChannels, open_pidfd
from ._containment import PidsCgroup, descendants, process_limit_for_root_unavailable
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


class ProcessKernel:
    """The parts of a local kernel backend that do not depend on how the process was made."""

    needs_nproc_limit = False  # set when max_processes must be enforced by the kernel itself
    has_fork_code = False  # whether the kernel holds the code that checkpoints it (``_checkpoints``)
    installed: str | None = None  # the install(...) call its kernelexec hooks were installed with

    def __init__(self, stderr_file: IO[bytes]) -> None:
        self._stderr_file = stderr_file
        self._channels: ZmqChannels | None = None
        self._pidfd: int | None = None
        self._exited_at: float | None = None
        self._closed = False
        self._watchdog: OwnerDeathWatchdog | None = None
        self._cgroup: PidsCgroup | None = None
        self.info: dict[str, Any] = {}
        # A kernel in a sandbox that can fork copies (a sandboxed template's): see _sandbox_start.
        self.view: SandboxView | None = None

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def is_alive(self) -> bool:
        raise NotImplementedError

    def returncode(self) -> int | None:
        """The process's exit status once it is known (negative: killed by that signal)."""
        raise NotImplementedError

    def death(self) -> KernelDeath:
        code = self.returncode()
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


    def _contain(self, max_processes: int | None, pid: int | None = None) -> None:
        """Put the kernel (or ``pid``, the process it descends from) in a cgroup of its own
        where possible (see ``_containment``)."""
        pid = pid or self.pid
        self._cgroup = PidsCgroup.create(f"kernelexec-{self.kernel_id}", max_processes)
        if self._cgroup is not None and pid is not None:
            try:
                self._cgroup.add(pid)
                return
            except OSError:
                self._cgroup.kill_and_remove()
                self._cgroup = None
        if max_processes is None:
            return
        if os.geteuid() == 0:
            raise process_limit_for_root_unavailable()
        self.needs_nproc_limit = True


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


def format_detail(detail: str) -> str:
    return f" Its last words on stderr:\n{detail}" if detail else ""
