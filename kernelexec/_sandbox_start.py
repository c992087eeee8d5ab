"""The owner's side of one sandboxed kernel process: how ``bwrap`` is started and held.

``bwrap`` (pid B, the process jupyter_client starts) clones the sandbox's pid 1 (bwrap's reaper,
I), which forks the kernel (K)::

    owner ── B (monitor) ── I (pid 1 inside) ── K (the kernel, pid 2 inside) ── what the code starts

B exits with K's status as soon as K exits (a signal ``n`` as ``128 + n``), so B's pidfd tells of
the kernel's death. I and K run in a new session (``--new-session``), apart from B's process
group; B's death kills I (``--die-with-parent``) and with it everything inside. I waits on
``--block-fd`` until the owner has put it in the kernel's cgroup, so K and all it starts are
born there. SIGINT goes to K alone: B would die of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from ._containment import descendants
from ._errors import SandboxUnavailable
from ._sandbox import Sandbox, bwrap_argv, sandbox_env


class SandboxedStart:
    """The pipes ``bwrap`` reads and writes while a kernel starts, and the pids it reveals."""

    def __init__(self, sandbox: Sandbox, runtime_dir: str) -> None:
        self.sandbox = sandbox
        self.runtime_dir = runtime_dir
        self._block_read, self._block_write = os.pipe()
        self._info_read, self._info_write = os.pipe()
        try:
            self._seccomp = seccomp_fd()
        except BaseException:
            for fd in (self._block_read, self._block_write, self._info_read, self._info_write):
                os.close(fd)
            raise
        self.init_pid: int | None = None
        self._kernel_pidfd: int | None = None

    @property
    def pass_fds(self) -> tuple[int, ...]:
        fds = (self._block_read, self._info_write)
        return fds + ((self._seccomp,) if self._seccomp is not None else ())

    def command(self, command: list[str], cwd: str, env: Mapping[str, str]) -> list[str]:
        argv = bwrap_argv(
            self.sandbox, command, cwd=cwd, env=env, runtime_dir=self.runtime_dir,
            block_fd=self._block_read, seccomp_fd=self._seccomp,
        )  # fmt: skip
        # ipykernel's parent poller takes the sandbox's pid 1 for a dead parent; the
        # owner-death watchdog and --die-with-parent do its job.
        i = argv.index("--")
        return argv[:i] + ["--unsetenv", "JPY_PARENT_PID", "--info-fd", str(self._info_write)] + argv[i:]

    def launched(self) -> None:
        """``bwrap`` has the child's ends now."""
        for name in ("_block_read", "_info_write", "_seccomp"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    async def init_started(self, timeout: float) -> int | None:
        """The sandbox's pid 1 (as the owner sees it), once bwrap has made it; ``None`` if bwrap
        failed first (its stderr says why) or said nothing within ``timeout``."""
        info = await _read_json(self._info_read, timeout)
        try:
            self.init_pid = int(json.loads(info)["child-pid"])
        except (ValueError, KeyError, TypeError):
            self.init_pid = None  # bwrap failed before the clone: its stderr says why
        return self.init_pid

    def unblock(self) -> None:
        """Let the sandbox start the kernel (its pid 1 is contained now)."""
        os.write(self._block_write, b"1")
        os.close(self._block_write)
        self._block_write = None

    def kernel_pid(self) -> int | None:
        """K, found as the first child of the sandbox's pid 1 (once the kernel answers)."""
        if self.init_pid is None:
            return None
        try:
            with open(f"/proc/{self.init_pid}/task/{self.init_pid}/children") as children:
                pids = [int(pid) for pid in children.read().split()]
        except OSError:
            pids = sorted(descendants(self.init_pid))
        return pids[0] if pids else None

    def hold_kernel(self) -> None:
        """Hold K by a pidfd, so its pid cannot be reused while we may signal it."""
        pid = self.kernel_pid()
        if pid is not None and self._kernel_pidfd is None:
            try:
                self._kernel_pidfd = os.pidfd_open(pid)
            except OSError:
                pass

    def interrupt(self) -> None:
        if self._kernel_pidfd is not None:
            try:
                signal.pidfd_send_signal(self._kernel_pidfd, signal.SIGINT)
            except OSError:
                pass  # it has exited: its death is reported by bwrap's exit

    def close(self) -> None:
        """Close what is left open and remove the runtime directory (after its files)."""
        self.launched()
        for name in ("_block_write", "_info_read", "_kernel_pidfd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


class SandboxView:
    """How the owner reaches processes in one sandbox: the directory bound read-write into it
    (for sockets and connection files), and the translation of the pids they report (their
    own, in the sandbox's PID namespace) into the owner's, found among ``root``'s descendants."""

    def __init__(self, directory: str, root: int) -> None:
        self.directory = directory
        self.root = root
        self._outer: dict[int, int] = {}

    def outer_pid(self, inner: int) -> int | None:
        """The owner's pid of the sandbox's process ``inner`` (a living one), or ``None``."""
        for pid in descendants(self.root):
            if _namespace_pids(pid)[-1:] == [inner]:
                self._outer[inner] = pid
                return pid
        return None

    def known_outer_pid(self, inner: int) -> int | None:
        """What ``outer_pid`` found for ``inner`` before (the process may be gone now)."""
        return self._outer.get(inner)


def _namespace_pids(pid: int) -> list[int]:
    """A process's pids, outermost namespace first (/proc/PID/status ``NSpid``)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return [int(field) for field in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def popen_sandboxed(sandbox: Sandbox, command: list[str], *, cwd: str, env: Mapping[str, str], directory: str,
                    **popen: Any) -> subprocess.Popen[bytes]:  # fmt: skip
    """``command`` started under ``sandbox`` by bwrap (a fork template): the caller's
    ``subprocess.Popen`` keywords, the sandbox's environment."""
    seccomp = seccomp_fd()
    try:
        argv = bwrap_argv(sandbox, command, cwd=cwd, env=env, runtime_dir=directory, block_fd=None, seccomp_fd=seccomp)
        return subprocess.Popen(argv, env=sandbox_env(env), pass_fds=(seccomp,) if seccomp is not None else (), **popen)
    finally:
        if seccomp is not None:
            os.close(seccomp)


def exit_status(returncode: int | None) -> int | None:
    """bwrap's exit status as the kernel's: a kernel killed by signal ``n`` makes bwrap exit
    with ``128 + n`` (a kernel that exits with such a code itself reads as that signal)."""
    if returncode is not None and 128 < returncode <= 128 + signal.NSIG:
        return -(returncode - 128)
    return returncode


def seccomp_fd() -> int | None:
    """A memfd holding the sandbox's seccomp filter, or ``None`` while there is no filter
    module (``_seccomp``); ``SandboxUnavailable`` where the filter cannot be applied."""
    try:
        from ._seccomp import sandbox_filter, seccomp_unavailable_reason  # type: ignore[import-not-found]
    except ImportError:
        return None
    reason = seccomp_unavailable_reason()
    if reason is not None:
        raise SandboxUnavailable(f"cannot sandbox the kernel: {reason}")
    fd = os.memfd_create("kernelexec-seccomp", os.MFD_CLOEXEC)
    os.write(fd, sandbox_filter())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


async def _read_json(fd: int, timeout: float) -> bytes:
    """A JSON document written to ``fd`` (bwrap writes one), or what came before EOF."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = loop.create_future()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, deadline - time.monotonic())
        except asyncio.TimeoutError:
            break
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            break
        data += chunk
        try:
            json.loads(data)
            break
        except ValueError:
            continue
    return data
