"""``LocalKernel``: a kernel process on this machine, behind the backend seam (``_backend``).

It is started by jupyter_client's ``AsyncKernelManager`` over the IPC transport, contained (its
own cgroup where one can be made, an owner-death watchdog), and read without polling: ZMQ sockets
and a pidfd on the asyncio loop (``_channels``).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import subprocess
import tempfile
import time
import uuid
from typing import IO, Any

import zmq
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir

from ._backend import KernelDeath, KernelDied, wait_until_ready
from ._channels import ZmqChannels, open_pidfd
from ._containment import (
    PidsCgroup, descendants, kill_unchanged, process_limit_for_root_unavailable,
)  # fmt: skip
from ._errors import KernelStartError
from ._watchdog import OwnerDeathWatchdog
from ._wire import CHANNEL_NAMES, STDERR_KEEP_BYTES, Message

# Messages already sent by a kernel that just died may still be on their way through ZMQ.
DEATH_DRAIN_SECONDS = 0.02
# How long a kernel may take to exit after a shutdown_request before it is killed.
GRACEFUL_EXIT_SECONDS = 1.0
# How long a SIGKILLed kernel may take to be gone (it is immediate unless the machine is swamped).
KILL_WAIT_SECONDS = 5.0
# Without a pidfd (non-Linux), how often to check whether the kernel process is alive.
EXIT_CHECK_SECONDS = 0.1


class LocalKernel:
    """A kernel process on this machine, started by jupyter_client's ``AsyncKernelManager``.

    It uses the IPC transport (no TCP ports to race for, nothing on the network), sends the
    kernel's stderr to a private temporary file that explains a crash, and learns of the process's
    exit through a pidfd on Linux rather than by polling.
    """

    # Set when max_processes must be enforced by the kernel itself (RLIMIT_NPROC), see _containment.
    needs_nproc_limit = False

    def __init__(self, manager: AsyncKernelManager, stderr_file: IO[bytes]) -> None:
        self._manager = manager
        self._stderr_file = stderr_file
        self._channels: ZmqChannels | None = None
        self._pidfd: int | None = None
        self._exited_at: float | None = None
        self._closed = False
        self._watchdog: OwnerDeathWatchdog | None = None
        self._cgroup: PidsCgroup | None = None
        self.info: dict[str, Any] = {}

    @property
    def kernel_id(self) -> str:
        return self._manager.kernel_id or ""

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return getattr(self._manager.provisioner, "process", None)

    @property
    def is_alive(self) -> bool:
        process = self.process
        return process is not None and process.poll() is None

    @classmethod
    async def start(
        cls,
        kernel_name: str,
        *,
        cwd: str | None,
        env: dict[str, str],
        startup_timeout: float,
        max_processes: int | None = None,
    ) -> LocalKernel:
        """Start a kernel and return it once it answers requests on every channel."""
        manager = _new_manager(kernel_name)
        kernel = cls(manager, tempfile.TemporaryFile(prefix="kernelexec-stderr-"))
        _LIVE_KERNELS.add(kernel)
        try:
            await manager.start_kernel(
                cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=kernel._stderr_file, extra_arguments=_extra_arguments(manager),
            )  # fmt: skip
            kernel._contain(max_processes)
            cgroup = kernel._cgroup.path if kernel._cgroup is not None else None
            kernel._watchdog = OwnerDeathWatchdog.start(
                manager.provisioner.pgid, _kernel_files(manager), cgroup
            )
            kernel._connect()
            kernel.info = await wait_until_ready(kernel, startup_timeout, f"kernel {kernel_name!r}")
            await kernel._await_stdin_connection(startup_timeout)
        except BaseException as error:
            last_words = kernel.stderr_tail()  # before shutdown closes the file
            await kernel.shutdown(graceful=False)
            if isinstance(error, KernelDied):
                raise KernelStartError(
                    f"the {kernel_name!r} kernel died while starting: {error.death.describe()}."
                    f"{_format_detail(last_words)}"
                ) from None
            if isinstance(error, (OSError, subprocess.SubprocessError, zmq.ZMQError)):
                raise KernelStartError(f"could not launch the {kernel_name!r} kernel: {error}") from error
            raise
        return kernel

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
                drain_left = self._exited_at + DEATH_DRAIN_SECONDS - now
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

    async def interrupt(self) -> None:
        if self.is_alive:
            await self._manager.interrupt_kernel()

    async def shutdown(self, *, graceful: bool = True) -> None:
        """Ask the kernel to exit, kill it (and its process group) if it does not, clean up."""
        if self._closed:
            return
        self._closed = True
        _LIVE_KERNELS.discard(self)
        strays = self._strays()
        try:
            if self._channels is not None and self._pidfd is not None and self.is_alive:
                if graceful:
                    await self._manager.request_shutdown()
                    await self._await_exit(GRACEFUL_EXIT_SECONDS)
                if self.is_alive:
                    _signal_process_group(self._manager, signal.SIGKILL)
                    await self._await_exit(KILL_WAIT_SECONDS)
        finally:
            self._close_channels()  # before the manager terminates the ZMQ context they live in
            try:
                if self._manager.has_kernel:
                    await self._manager.shutdown_kernel(now=True)  # prompt: the process is gone
                else:
                    await self._manager.cleanup_resources()
            finally:
                self._release_process(strays)

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): kill the process group, remove files."""
        if self._closed:
            return
        self._closed = True
        _LIVE_KERNELS.discard(self)
        self._close_channels()
        self._release_process(self._strays())
        try:
            self._manager.cleanup_connection_file()
            self._manager.cleanup_ipc_files()
        except Exception:  # exiting anyway: a file we could not remove must not mask that
            pass

    def death(self) -> KernelDeath:
        process = self.process
        code = process.poll() if process is not None else None
        if code is not None and code < 0:
            return KernelDeath(signal_number=-code, detail=self.stderr_tail())
        return KernelDeath(exit_code=code, detail=self.stderr_tail())

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

    def _connect(self) -> None:
        manager = self._manager
        context = zmq.Context.shadow(manager.context.underlying)
        self._channels = ZmqChannels(context, manager.get_connection_info(), manager.session)
        self._channels.watch(asyncio.get_running_loop())
        process = self.process
        self._pidfd = open_pidfd(process.pid) if process is not None else None
        if self._pidfd is not None:
            self._channels.watch_fd(self._pidfd, self._on_exit)

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

    def _contain(self, max_processes: int | None) -> None:
        """Put the kernel in a cgroup of its own where possible (see ``_containment``)."""
        process = self.process
        assert process is not None
        self._cgroup = PidsCgroup.create(f"kernelexec-{self.kernel_id}", max_processes)
        if self._cgroup is not None:
            try:
                self._cgroup.add(process.pid)
                return
            except OSError:
                self._cgroup.kill_and_remove()
                self._cgroup = None
        if max_processes is None:
            return
        if os.geteuid() == 0:
            raise process_limit_for_root_unavailable()
        self.needs_nproc_limit = True

    def _close_channels(self) -> None:
        if self._channels is not None:
            self._channels.close()
            self._channels = None

    def _strays(self) -> dict[int, bytes]:
        """Without a cgroup, what the code started outside the kernel's process group is found
        through the kernel: it must be looked up while the kernel is still its parent."""
        process = self.process
        if self._cgroup is not None or process is None or process.poll() is not None:
            return {}
        return descendants(process.pid)

    def _release_process(self, strays: dict[int, bytes]) -> None:
        """Kill the kernel and whatever the user's code started; free what the kernel held."""
        _signal_process_group(self._manager, signal.SIGKILL)
        kill_unchanged(strays)
        process = self.process
        if process is not None:
            try:
                process.wait(timeout=KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                pass
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


def installed_kernel_names() -> list[str]:
    return sorted(KernelSpecManager().find_kernel_specs())


def _new_manager(kernel_name: str) -> AsyncKernelManager:
    kernel_id = str(uuid.uuid4())
    runtime_dir = jupyter_runtime_dir()
    os.makedirs(runtime_dir, mode=0o700, exist_ok=True)  # the sockets are reachable by path
    manager = AsyncKernelManager(
        kernel_name=kernel_name,
        transport="ipc",
        connection_file=os.path.join(runtime_dir, f"kernel-{kernel_id}.json"),
        ip=os.path.join(runtime_dir, f"kx-{kernel_id[:13]}"),  # socket paths must stay short
    )
    manager.kernel_id = kernel_id
    try:
        manager.kernel_spec  # noqa: B018 - resolves the spec, raising NoSuchKernel early
    except NoSuchKernel:
        names = ", ".join(installed_kernel_names()) or "none"
        raise KernelStartError(
            f"no kernel spec named {kernel_name!r} is installed (installed: {names}). Pass one of "
            "those as kernel_name, or install one, e.g. `python -m ipykernel install --user`."
        ) from None
    return manager


def _extra_arguments(manager: AsyncKernelManager) -> list[str]:
    """IPython kernels keep their history in memory, as nbclient runs them: no sqlite file
    shared (and locked) by every kernel on the machine."""
    return ["--HistoryManager.hist_file=:memory:"] if manager.ipykernel else []


def _kernel_files(manager: AsyncKernelManager) -> list[str]:
    """The connection file and, for IPC, the socket files of a started kernel."""
    info = manager.get_connection_info()
    files = [manager.connection_file]
    if info["transport"] == "ipc":
        files += [f"{info['ip']}-{info[f'{channel}_port']}" for channel in CHANNEL_NAMES]
    return files


def _signal_process_group(manager: AsyncKernelManager, signum: int) -> None:
    """Signal the kernel and every process in its group (what the user's code started)."""
    pgid = getattr(manager.provisioner, "pgid", None)
    if pgid and hasattr(os, "killpg"):
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass
    process = getattr(manager.provisioner, "process", None)
    if process is not None and process.poll() is None:
        try:
            process.send_signal(signum)
        except OSError:
            pass


def _format_detail(detail: str) -> str:
    return f" Its last words on stderr:\n{detail}" if detail else ""


_LIVE_KERNELS: set[LocalKernel] = set()


@atexit.register
def _kill_live_kernels() -> None:
    """Kernels must not outlive their owner, even one that never called shutdown()."""
    for kernel in list(_LIVE_KERNELS):
        kernel.kill_now()
