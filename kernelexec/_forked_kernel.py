"""``ForkedKernel``: a kernel made by a fork server (a template or a checkpoint), behind the seam.

The client writes the connection file and makes the stderr file; the server's fork child binds
the channels and answers like any kernel. The process is not our child: its exit is learnt from
a pidfd, its exit status from the server that reaps it. It is contained as a spawned kernel is
(its own process group and cgroup, an owner-death watchdog) and interrupted by SIGINT to its
process group, as jupyter_client does for a kernel spec's ``signal`` interrupt mode.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import uuid
from typing import Any

import zmq
from jupyter_client.connect import write_connection_file
from jupyter_client.session import Session as ProtocolSession

from ._backend import KernelDied, wait_until_ready
from ._channels import ZmqChannels, channel_url
from ._containment import kill_unchanged
from ._errors import KernelStartError
from ._fork_client import ForkServer, runtime_path
from ._options import SessionOptions
from ._process_kernel import ProcessKernel, format_detail
from ._sandbox import sandbox_env
from ._sandbox_start import SandboxView
from ._watchdog import OwnerDeathWatchdog
from ._wire import CHANNEL_NAMES

GRACEFUL_EXIT_SECONDS = 1.0
KILL_WAIT_SECONDS = 5.0
# IPython kernels keep their history in memory, as nbclient runs them (see _kernel).
KERNEL_ARGV = ["--HistoryManager.hist_file=:memory:"]


class ForkedKernel(ProcessKernel):
    """A kernel forked by ``server``; see the module docstring."""

    has_fork_code = True  # a fork server's child has the fork server's code

    def __init__(self, kernel_id: str, connection_file: str, info: dict[str, Any], stderr_path: str) -> None:
        super().__init__(open(stderr_path, "rb"))
        self.kernel_id = kernel_id
        self._connection_file = connection_file
        self._connection = info
        self._stderr_path = stderr_path
        self._pid: int | None = None
        self._servers: list[ForkServer] = []
        self._context = zmq.Context()
        self._control: zmq.Socket | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def is_alive(self) -> bool:
        if self._pid is None or self._closed or self._exited_at is not None:
            return False
        try:
            os.kill(self._pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return self.returncode() is None

    def returncode(self) -> int | None:
        for server in self._servers:
            code = server.returncode(self._pid) if self._pid is not None else None
            if code is not None:
                return code
        return None

    def _exit_status_comes_later(self) -> bool:
        return any(server.connected for server in self._servers)

    @classmethod
    async def start(cls, server: ForkServer, options: SessionOptions, *, witnesses: list[ForkServer],
                    install: str | None = None) -> ForkedKernel:  # fmt: skip
        """Fork a kernel from ``server`` for ``options``; ready to take requests.

        ``witnesses`` are other servers that may reap it later (the template, a subreaper).
        ``install``: the ``install(...)`` call the child runs itself, with the server's copy of
        kernelexec's in-kernel code, before it serves (see ``_launch.prepare_kernel``).
        """
        kernel = cls._new(options.kernel_name, server.view)
        _LIVE_KERNELS.add(kernel)
        try:
            kernel._servers = [server, *witnesses]
            for witness in kernel._servers:
                witness.on_exit(kernel._on_status)
            kernel._make_cgroup(options.max_processes, options.memory_limit)
            kernel._pid = await server.fork({**kernel._fork_request(options), "install": install})
            kernel._contain(options.max_processes, options.memory_limit)
            cgroups = kernel._cgroup.paths if kernel._cgroup is not None else []
            kernel._watchdog = OwnerDeathWatchdog.start(kernel._pid, kernel._files(), cgroups)
            kernel._connect()
            kernel.info = await wait_until_ready(kernel, options.startup_timeout, f"a forked {options.kernel_name!r} kernel")
            await kernel._await_stdin_connection(options.startup_timeout)
            kernel.installed = install
        except BaseException as error:
            last_words = kernel.stderr_tail()
            await kernel.shutdown(graceful=False)
            if isinstance(error, KernelDied):
                raise KernelStartError(
                    f"a forked kernel died while starting: {error.death.describe()}.{format_detail(last_words)}"
                ) from None
            if isinstance(error, (OSError, zmq.ZMQError)):
                raise KernelStartError(f"could not start a forked kernel: {error}") from error
            raise
        return kernel

    @classmethod
    def _new(cls, kernel_name: str, view: SandboxView | None) -> ForkedKernel:
        """Its files: in the runtime dir, or (a sandboxed server's kernel) in the sandbox's."""
        kernel_id = str(uuid.uuid4())
        directory = view.directory if view is not None else None
        connection_file, info = write_connection_file(
            runtime_path("kernel-", ".json", directory), transport="ipc", ip=runtime_path("kx-", "", directory),
            key=secrets.token_hex(16).encode(), kernel_name=kernel_name,
        )  # fmt: skip
        stderr_path = runtime_path("kx-stderr-", ".txt", directory)
        os.close(os.open(stderr_path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
        kernel = cls(kernel_id, connection_file, dict(info), stderr_path)
        kernel.view = view
        return kernel

    @property
    def spill_directory(self) -> str | None:
        return self.view.directory if self.view is not None else None  # bound into its sandbox

    def _fork_request(self, options: SessionOptions) -> dict[str, Any]:
        rlimits = {}
        if options.max_processes is not None and self.needs_nproc_limit:
            rlimits["RLIMIT_NPROC"] = options.max_processes
        env, cwd = options.kernel_env(), options.cwd
        if self.view is not None:  # the sandbox's view of home and /tmp; the template's cwd
            env, cwd = sandbox_env(env), None
        # A sandboxed child cannot reach the cgroup file system: the client moves it (_contain).
        cgroups = self._cgroup.procs_files() if self._cgroup is not None and self.view is None else []
        return {
            "id": self.kernel_id, "connection_file": self._connection_file,
            "stderr_path": self._stderr_path, "env": env, "cwd": cwd,
            "rlimits": rlimits, "argv": KERNEL_ARGV, "cgroups": cgroups,
        }  # fmt: skip

    def _connect(self) -> None:
        key = self._connection["key"]
        session = ProtocolSession(key=key if isinstance(key, bytes) else key.encode(),
                                  signature_scheme=self._connection["signature_scheme"])  # fmt: skip
        self._watch_process(ZmqChannels(self._context, self._connection, session))
        self._control = self._context.socket(zmq.DEALER)
        self._control.linger = 0
        self._control.connect(channel_url(self._connection, "control"))
        self._protocol = session

    def _on_status(self, pid: int, returncode: int) -> None:
        if pid == self._pid and self._channels is not None:
            self._channels.wake()

    async def interrupt(self) -> None:
        if self.is_alive and self._pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, signal.SIGINT)

    async def shutdown(self, *, graceful: bool = True) -> None:
        """Ask the kernel to exit, kill its process group if it does not, clean up."""
        if self._closed:
            return
        strays = self._strays()
        try:
            if graceful and self._control is not None and self.is_alive:
                self._protocol.send(self._control, "shutdown_request", {"restart": False})
                await self._await_exit(GRACEFUL_EXIT_SECONDS)
            self._closed = True
            if self.is_alive or self._exited_at is None:
                self._kill_group()
                if self._channels is not None and self._pidfd is not None:
                    await self._await_exit(KILL_WAIT_SECONDS)
        finally:
            self._closed = True
            self._release(strays)

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit)."""
        if not self._closed:
            self._closed = True
            self._kill_group()
            self._release(self._strays())

    def _kill_group(self) -> None:
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, signal.SIGKILL)

    def _release(self, strays: dict[int, bytes]) -> None:
        _LIVE_KERNELS.discard(self)
        for server in self._servers:
            if self._pid is not None:
                server.forget(self._pid, self._on_status)
        kill_unchanged(strays)
        self._close_channels()
        if self._control is not None:
            self._control.close(linger=0)
            self._control = None
        self._context.destroy(linger=0)  # also a socket a failed start left open
        self._release_containment()
        for path in self._files():
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _files(self) -> list[str]:
        info = self._connection
        sockets = [f"{info['ip']}-{info[f'{channel}_port']}" for channel in CHANNEL_NAMES]
        return [self._connection_file, self._stderr_path, *sockets]


_LIVE_KERNELS: set[ForkedKernel] = set()


@atexit.register
def _kill_live_kernels() -> None:
    """Kernels must not outlive their owner, even one that never called shutdown()."""
    for kernel in list(_LIVE_KERNELS):
        kernel.kill_now()
