"""Fork servers, seen from the client: the template per interpreter, and the protocol.

A fork server (``_fork_server``, shipped source) is a process blocked on a Unix socket whose fork
children become kernels. Two kinds serve the same protocol: a *template* (a fresh interpreter
with IPython and ipykernel imported, no threads, no ZMQ context: its children become fresh
kernels) and a *checkpoint* (a frozen copy of a live kernel: its children are copies of that
kernel's state). ``ForkServer`` is one connection to either; ``Template`` owns a template
process, shared by the sessions of one event loop that launch with the same interpreter, and
shut down with the last of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir

from . import _fork_server, _fork_side
from ._env import MINIMAL_BASE
from ._errors import KernelStartError
from ._sandbox import Sandbox, check_cwd
from ._sandbox_start import SandboxView, popen_sandboxed
from ._watchdog import OwnerDeathWatchdog

FORK_SOURCE = inspect.getsource(_fork_server) + "\n" + inspect.getsource(_fork_side)
# How long a template may take to import IPython and listen (it is a kernel start, less the kernel).
TEMPLATE_START_SECONDS = 60.0
# A server that does not answer a request within this long is treated as gone.
REQUEST_SECONDS = 30.0


def _interpreter_vars(env: dict[str, str]) -> dict[str, str]:
    """The variables that change how an interpreter starts (sys.path, bytecode, hash seed, ...):
    a template is made with them, since its kernels cannot change them after the start."""
    return {name: value for name, value in env.items() if name.startswith("PYTHON")}


def runtime_path(prefix: str, suffix: str = "", directory: str | None = None) -> str:
    """A new path in Jupyter's runtime directory (private to the user), or in ``directory`` (a
    sandbox's), short enough for a socket."""
    runtime_dir = directory or jupyter_runtime_dir()
    os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
    return os.path.join(runtime_dir, f"{prefix}{uuid.uuid4().hex[:12]}{suffix}")


class ForkServer:
    """One connection to a fork server: requests by id, and the exit statuses it reports."""

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 view: SandboxView | None = None) -> None:  # fmt: skip
        self.path = path
        self.view = view  # the server runs in a sandbox: the pids it reports are the sandbox's
        self._reader, self._writer = reader, writer
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[int, int] = {}
        self._exit_listeners: list[Callable[[int, int], None]] = []
        self._reading = asyncio.ensure_future(self._read_forever())
        self.pid: int | None = None

    @classmethod
    async def connect(cls, path: str, timeout: float, view: SandboxView | None = None,
                      process: subprocess.Popen[bytes] | None = None) -> ForkServer:  # fmt: skip
        """Connect to the server at ``path``, retrying until it listens, ``timeout`` passes or
        its ``process`` (if known) exits."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if process is not None and process.poll() is not None:
                    raise ConnectionError(f"it exited with status {process.returncode} before it listened") from None
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.005)
        server = cls(path, reader, writer, view)
        server.pid = server._outer((await server.request({"op": "ping"}, timeout))["pid"])
        return server

    def _outer(self, pid: int) -> int:
        """A pid the server reported, as this process sees it."""
        if self.view is None:
            return pid
        outer = self.view.outer_pid(pid)
        if outer is None:
            raise ConnectionError(f"process {pid} of the sandbox at {self.view.directory} is gone")
        return outer

    @property
    def connected(self) -> bool:
        return not self._reading.done()

    def on_exit(self, listener: Callable[[int, int], None]) -> None:
        """Call ``listener(pid, returncode)`` for every process the server reaps from now on."""
        self._exit_listeners.append(listener)

    def forget(self, pid: int, listener: Callable[[int, int], None]) -> None:
        """Stop telling ``listener`` of exits; forget ``pid``'s exit status."""
        with contextlib.suppress(ValueError):
            self._exit_listeners.remove(listener)
        self._exits.pop(pid, None)

    def returncode(self, pid: int) -> int | None:
        return self._exits.get(pid)

    async def request(self, request: dict[str, Any], timeout: float = REQUEST_SECONDS, *,
                      abandoned: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
        """Send ``request``; its reply. ``abandoned`` gets the reply if it comes after the caller
        gave up (cancelled, timed out): what the server did meanwhile may need undoing."""
        request_id = request.get("id") or uuid.uuid4().hex
        request = {**request, "id": request_id}
        reply = asyncio.get_running_loop().create_future()
        self._replies[request_id] = reply
        try:
            self._writer.write(json.dumps(request).encode() + b"\n")
            await self._writer.drain()
            answer = await asyncio.wait_for(asyncio.shield(reply), timeout)
            abandoned = None
            return answer
        except (OSError, asyncio.TimeoutError) as error:
            raise ConnectionError(f"the fork server at {self.path} did not answer: {error!r}") from None
        finally:
            if abandoned is None:
                self._replies.pop(request_id, None)
            else:
                reply.add_done_callback(lambda done: self._late_reply(request_id, done, abandoned))

    def _late_reply(self, request_id: str, reply: asyncio.Future[dict[str, Any]],
                    abandoned: Callable[[dict[str, Any]], None]) -> None:  # fmt: skip
        self._replies.pop(request_id, None)
        if not reply.cancelled() and reply.exception() is None:
            abandoned(reply.result())

    async def fork(self, request: dict[str, Any]) -> int:
        """Ask for a kernel (see ``_fork_server``); its pid. Raises ``KernelStartError``."""
        try:
            reply = await self.request({"op": "fork", **request}, abandoned=self._kill_forked)
        except ConnectionError as error:
            raise KernelStartError(f"could not fork a kernel: {error}") from None
        if not reply.get("ok"):
            raise KernelStartError(f"could not fork a kernel: {reply.get('error')}")
        try:
            return self._outer(int(reply["pid"]))
        except ConnectionError as error:
            raise KernelStartError(f"a forked kernel died at once: {error}") from None

    def _kill_forked(self, reply: dict[str, Any]) -> None:
        """A kernel forked for a caller that gave up first (nobody else knows its pid) goes."""
        if reply.get("ok"):
            with contextlib.suppress(ConnectionError, OSError, ValueError, KeyError):
                os.killpg(self._outer(int(reply["pid"])), signal.SIGKILL)

    async def close(self, *, stop_server: bool) -> None:
        """Close the connection; ``stop_server`` asks the server to exit first."""
        if stop_server and self.connected:
            with contextlib.suppress(ConnectionError):
                await self.request({"op": "close"}, timeout=5)
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        self._reading.cancel()
        await asyncio.gather(self._reading, return_exceptions=True)
        for reply in self._replies.values():
            reply.cancel()

    async def _read_forever(self) -> None:
        while True:
            line = await self._reader.readline()
            if not line:
                break
            message = json.loads(line)
            if message.get("event") == "exited":
                self._exited(int(message["pid"]), int(message["returncode"]))
                continue
            reply = self._replies.get(message.get("id") or "")
            if reply is None and message.get("id") is None and self._replies:
                reply = next(iter(self._replies.values()))  # ping and close replies carry no id
            if reply is not None and not reply.done():
                reply.set_result(message)
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(ConnectionError("the fork server closed the connection"))

    def _exited(self, pid: int, returncode: int) -> None:
        if self.view is not None:
            outer = self.view.known_outer_pid(pid)
            if outer is None:
                return  # not one of ours (an orphan reaped in the sandbox)
            pid = outer
        self._exits[pid] = returncode
        for listener in list(self._exit_listeners):
            listener(pid, returncode)


class Template:
    """A template process for one interpreter, shared by the sessions of one event loop.

    Started on first use, contained like a kernel (its own process group, an owner-death
    watchdog: it goes with us even on SIGKILL), re-made when it has died, and stopped when the
    last session or pool holding it lets go.
    """

    _by_loop: dict[int, dict[tuple[Any, ...], Template]] = {}

    def __init__(self, key: tuple[Any, ...], process: subprocess.Popen[bytes], server: ForkServer,
                 watchdog: OwnerDeathWatchdog | None, log_file: Any) -> None:  # fmt: skip
        self.key = key
        self.server = server
        self._process = process
        self._watchdog = watchdog
        self._log_file = log_file
        self._holders = 0
        self.loaded = False

    @classmethod
    async def acquire(cls, argv0: str, env: dict[str, str], timeout: float, sandbox: Sandbox | None = None,
                      cwd: str | None = None) -> Template:  # fmt: skip
        """The template for ``argv0`` with ``env``'s interpreter variables (in ``sandbox``, with
        ``cwd`` bound: its kernels run in that sandbox), held until ``release``."""
        if sandbox is not None:
            cwd = cwd or os.getcwd()
            check_cwd(cwd)
        key = (argv0, tuple(sorted(_interpreter_vars(env).items())), sandbox, cwd if sandbox else None)
        templates = cls._by_loop.setdefault(id(asyncio.get_running_loop()), {})
        template = templates.get(key)
        if template is not None and not template.alive:
            await template._stop()
            template = None
        if template is None:
            template = templates[key] = await cls._start(key, env, timeout)
        template._holders += 1
        return template

    async def load(self, kernel_source: str) -> None:
        """Compile kernelexec's in-kernel code in the template, for its kernels to install as
        they start (shared pages, and no setup round trip)."""
        reply = await self.server.request({"op": "load", "source": kernel_source})
        if not reply.get("ok"):
            raise KernelStartError(f"the fork template could not load kernelexec's in-kernel code:\n{reply.get('error')}")
        self.loaded = True

    def hold(self) -> Template:
        """One more holder of this (running) template."""
        self._holders += 1
        return self

    async def release(self) -> None:
        self._holders -= 1
        if self._holders > 0:
            return
        templates = self._by_loop.get(id(asyncio.get_running_loop()), {})
        if templates.get(self.key) is self:
            del templates[self.key]
        await self._stop()

    @property
    def alive(self) -> bool:
        return self._process.poll() is None and self.server.connected

    @classmethod
    async def _start(cls, key: tuple[Any, ...], env: dict[str, str], timeout: float) -> Template:
        argv0, sandbox, cwd = key[0], key[2], key[3]
        # A sandboxed template's socket, and its kernels' files, are in a directory bound into it.
        directory = runtime_path("kx-tpl-") if sandbox is not None else None
        if directory is not None:
            os.mkdir(directory, 0o700)
        path = os.path.join(directory, "fork.sock") if directory else runtime_path("kx-tpl-", ".sock")
        # The template holds no secrets: its environment is the minimal base (each kernel gets
        # its own, whole, at fork time) plus what changes how the interpreter starts.
        template_env = {name: env[name] for name in MINIMAL_BASE if name in env} | _interpreter_vars(env)
        log_file = tempfile.TemporaryFile(prefix="kernelexec-template-")
        command = [argv0, "-c", f"{FORK_SOURCE}\nserve_template({path!r})"]
        # start_new_session: a Ctrl-C aimed at us must not reach it
        popen: dict[str, Any] = dict(stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True)
        try:
            if sandbox is not None:
                assert directory is not None and cwd is not None
                process = popen_sandboxed(sandbox, command, cwd=cwd, env=template_env, directory=directory, **popen)
            else:
                process = subprocess.Popen(command, env=template_env, **popen)
        except BaseException as error:
            log_file.close()
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            if not isinstance(error, OSError):
                raise
            raise KernelStartError(f"could not start a fork template with {argv0}: {error}") from None
        view = SandboxView(directory, process.pid) if directory is not None else None
        watchdog = OwnerDeathWatchdog.start(process.pid, [path], [], directory)
        try:
            server = await ForkServer.connect(path, timeout, view, process)
        except (OSError, ConnectionError) as error:
            _kill(process)
            if watchdog is not None:
                watchdog.stop()
            log_file.seek(0)
            said = log_file.read().decode("utf-8", "replace").strip()[-2000:]
            log_file.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            raise KernelStartError(f"the fork template did not start ({error!r}): {said}") from None
        return cls(key, process, server, watchdog, log_file)

    async def _stop(self) -> None:
        await self.server.close(stop_server=True)
        deadline = time.monotonic() + 5
        while self._process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # it exits at once; no thread to wait in
        if self._process.poll() is None:
            _kill(self._process)
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        with contextlib.suppress(OSError):
            os.unlink(self.server.path)
        if self.server.view is not None:
            shutil.rmtree(self.server.view.directory, ignore_errors=True)
        self._log_file.close()


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(process.pid, 9)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def interpreter_of(argv: list[str]) -> str | None:
    """The Python interpreter a kernel spec's argv runs, if it runs ipykernel's own launcher
    with one (a spec that runs code of its own first cannot be replaced by a fork)."""
    if argv[1:3] not in (["-m", "ipykernel_launcher"], ["-m", "ipykernel"]):
        return None
    argv0 = sys.executable if argv[0] in ("python", "python3", "{python}") else argv[0]
    return argv0 if os.path.basename(argv0).startswith("python") else None
