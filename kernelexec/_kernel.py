"""``LocalKernel``: a kernel process on this machine, behind the backend seam (``_backend``).

It is started by jupyter_client's ``AsyncKernelManager`` over the IPC transport, contained (its
own cgroup where one can be made, an owner-death watchdog), and read without polling: ZMQ sockets
and a pidfd on the asyncio loop (``_channels``).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from typing import IO

import zmq
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir

from ._backend import KernelDied, wait_until_ready
from ._channels import ZmqChannels
from ._containment import kill_unchanged
from ._errors import KernelStartError
from ._process_kernel import ProcessKernel, format_detail
from ._sandbox import Sandbox, check_cwd, sandbox_env
from ._sandbox_start import SandboxedStart, exit_status
from ._watchdog import OwnerDeathWatchdog
from ._wire import CHANNEL_NAMES

# How long a kernel may take to exit after a shutdown_request before it is killed.
GRACEFUL_EXIT_SECONDS = 1.0
# How long a SIGKILLed kernel may take to be gone (it is immediate unless the machine is swamped).
KILL_WAIT_SECONDS = 5.0


class LocalKernel(ProcessKernel):
    """A kernel process on this machine, started by jupyter_client's ``AsyncKernelManager``.

    It uses the IPC transport (no TCP ports to race for, nothing on the network), sends the
    kernel's stderr to a private temporary file that explains a crash, and learns of the process's
    exit through a pidfd on Linux rather than by polling.
    """

    def __init__(
        self, manager: AsyncKernelManager, stderr_file: IO[bytes], sandboxed: SandboxedStart | None = None
    ) -> None:
        super().__init__(stderr_file)
        self._manager = manager
        self._sandboxed = sandboxed

    @property
    def sandboxed(self) -> bool:
        return self._sandboxed is not None

    @property
    def spill_directory(self) -> str | None:
        return self._sandboxed.runtime_dir if self._sandboxed is not None else None  # bound into its sandbox

    @property
    def kernel_id(self) -> str:
        return self._manager.kernel_id or ""

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return getattr(self._manager.provisioner, "process", None)

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None else None

    @property
    def is_alive(self) -> bool:
        process = self.process
        return process is not None and process.poll() is None

    def returncode(self) -> int | None:
        process = self.process
        code = process.poll() if process is not None else None
        return exit_status(code) if self._sandboxed is not None else code

    @classmethod
    async def start(
        cls,
        kernel_name: str,
        *,
        cwd: str | None,
        env: dict[str, str],
        startup_timeout: float,
        max_processes: int | None = None,
        sandbox: Sandbox | None = None,
        memory_limit: int | None = None,
    ) -> LocalKernel:
        """Start a kernel and return it once it answers requests on every channel (in
        ``sandbox``, if given: see ``_sandbox``)."""
        manager = _new_manager(kernel_name, sandboxed=sandbox is not None)
        sandboxed = None
        launch: dict[str, object] = {}
        if sandbox is not None:
            cwd = cwd or os.getcwd()
            try:
                check_cwd(cwd)
                sandboxed = SandboxedStart(sandbox, os.path.dirname(manager.connection_file))
            except BaseException:
                os.rmdir(os.path.dirname(manager.connection_file))
                raise
            manager.wrap_command = lambda command: sandboxed.command(command, cwd, env)
            env, launch = sandbox_env(env), {"pass_fds": sandboxed.pass_fds}
        kernel = cls(manager, tempfile.TemporaryFile(prefix="kernelexec-stderr-"), sandboxed)
        _LIVE_KERNELS.add(kernel)
        try:
            kernel._make_cgroup(max_processes, memory_limit)
            try:
                await manager.start_kernel(
                    cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=kernel._stderr_file, extra_arguments=_extra_arguments(manager), **launch,
                )  # fmt: skip
            finally:
                if sandboxed is not None:
                    sandboxed.launched()
            if sandboxed is not None:  # its pid 1 waits to be contained before the kernel starts
                init_pid = await sandboxed.init_started(startup_timeout)
                if init_pid is None:
                    raise kernel._sandbox_failed("bubblewrap did not make the sandbox", f"within {startup_timeout:g} s")
                kernel._contain(max_processes, memory_limit, pid=init_pid)
                try:
                    sandboxed.unblock()
                except BrokenPipeError:  # bwrap gave up while it set the sandbox up
                    raise kernel._sandbox_failed("the sandbox ended before the kernel started") from None
            else:
                kernel._contain(max_processes, memory_limit)
            cgroups = kernel._cgroup.paths if kernel._cgroup is not None else []
            kernel._watchdog = OwnerDeathWatchdog.start(
                manager.provisioner.pgid, _kernel_files(manager), cgroups,
                sandboxed.runtime_dir if sandboxed is not None else None,
            )  # fmt: skip
            kernel._connect()
            kernel.info = await wait_until_ready(kernel, startup_timeout, f"kernel {kernel_name!r}")
            await kernel._await_stdin_connection(startup_timeout)
            if sandboxed is not None:
                sandboxed.hold_kernel()
        except BaseException as error:
            last_words = kernel.stderr_tail()  # before shutdown closes the file
            await kernel.shutdown(graceful=False)
            if isinstance(error, KernelDied):
                raise KernelStartError(
                    f"the {kernel_name!r} kernel died while starting: {error.death.describe()}."
                    f"{format_detail(last_words)}"
                ) from None
            if isinstance(error, (OSError, subprocess.SubprocessError, zmq.ZMQError)):
                raise KernelStartError(f"could not launch the {kernel_name!r} kernel: {error}") from error
            raise
        return kernel

    def _sandbox_failed(self, what: str, unexplained: str = "") -> KernelStartError:
        """``what`` went wrong, in bubblewrap's own words if it said any (else ``unexplained``)."""
        said = self.stderr_tail()
        return KernelStartError(f"{what}: {said}" if said else f"{what} {unexplained}".rstrip() + ".")

    async def interrupt(self) -> None:
        if not self.is_alive:
            return
        if self._sandboxed is not None and self._manager.kernel_spec.interrupt_mode == "signal":
            self._sandboxed.interrupt()  # the kernel alone: bwrap, in its process group, dies of SIGINT
        else:
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
                if self._sandboxed is not None:
                    self._sandboxed.close()

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
            if self._sandboxed is not None:
                self._sandboxed.close()
        except Exception:  # exiting anyway: a file we could not remove must not mask that
            pass

    def _connect(self) -> None:
        manager = self._manager
        context = zmq.Context.shadow(manager.context.underlying)
        self._watch_process(ZmqChannels(context, manager.get_connection_info(), manager.session))

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
        self._release_containment()


def installed_kernel_names() -> list[str]:
    return sorted(KernelSpecManager().find_kernel_specs())


class _KernelManager(AsyncKernelManager):
    """jupyter_client's manager, whose kernel command may be wrapped (in ``bwrap``)."""

    wrap_command: Callable[[list[str]], list[str]] | None = None

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        command = super().format_kernel_cmd(extra_arguments)
        return self.wrap_command(command) if self.wrap_command is not None else command


def _new_manager(kernel_name: str, *, sandboxed: bool = False) -> AsyncKernelManager:
    kernel_id = str(uuid.uuid4())
    runtime_dir = jupyter_runtime_dir()
    os.makedirs(runtime_dir, mode=0o700, exist_ok=True)  # the sockets are reachable by path
    connection_file = os.path.join(runtime_dir, f"kernel-{kernel_id}.json")
    ip = os.path.join(runtime_dir, f"kx-{kernel_id[:13]}")  # socket paths must stay short
    if sandboxed:  # a directory of its own, bound into the sandbox (not the others' files)
        own = os.path.join(runtime_dir, f"kx-{kernel_id[:13]}")
        os.mkdir(own, mode=0o700)
        connection_file, ip = os.path.join(own, "kernel.json"), os.path.join(own, "kx")
    manager = _KernelManager(kernel_name=kernel_name, transport="ipc", connection_file=connection_file, ip=ip)
    manager.kernel_id = kernel_id
    try:
        manager.kernel_spec  # noqa: B018 - resolves the spec, raising NoSuchKernel early
    except NoSuchKernel:
        if sandboxed:
            os.rmdir(os.path.dirname(connection_file))
        raise _no_such_kernel(kernel_name) from None
    return manager


def kernel_spec(kernel_name: str) -> KernelSpec:
    """The installed kernel spec ``kernel_name``; ``KernelStartError`` names the installed ones."""
    try:
        return KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise _no_such_kernel(kernel_name) from None


def _no_such_kernel(kernel_name: str) -> KernelStartError:
    names = ", ".join(installed_kernel_names()) or "none"
    return KernelStartError(
        f"no kernel spec named {kernel_name!r} is installed (installed: {names}). Pass one of "
        "those as kernel_name, or install one, e.g. `python -m ipykernel install --user`."
    )


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


_LIVE_KERNELS: set[LocalKernel] = set()


@atexit.register
def _kill_live_kernels() -> None:
    """Kernels must not outlive their owner, even one that never called shutdown()."""
    for kernel in list(_LIVE_KERNELS):
        kernel.kill_now()
