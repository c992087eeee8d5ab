"""Helpers for the fork tests: a protocol client, forked kernels, and a fixture that makes them
in a private directory and kills them all (checkpoint servers and their kernels are not
descendants of the test process: double fork)."""

from __future__ import annotations

import inspect
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import psutil
import pytest
from jupyter_client import BlockingKernelClient, KernelManager
from jupyter_client.connect import write_connection_file

from kernelexec import _fork_server, _fork_side
from kernelexec._launch import KERNEL_SOURCE, packed_exec

SOURCE = inspect.getsource(_fork_server) + "\n" + inspect.getsource(_fork_side)
HISTORY = "--HistoryManager.hist_file=:memory:"


class Server:
    """A connection to a fork server: requests, and the events that arrive meanwhile."""

    def __init__(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("rb")
        self.events: list[dict] = []

    def send(self, line: bytes) -> dict:
        self.sock.sendall(line)
        while True:
            message = self._read()
            if "event" not in message:
                return message

    def request(self, **request: object) -> dict:
        return self.send((json.dumps(request) + "\n").encode())

    def _read(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise EOFError("the server closed the connection")
        message = json.loads(line)
        if "event" in message:
            self.events.append(message)
        return message

    def exited(self, pid: int) -> int:
        """The returncode of ``pid``, from its ``exited`` event."""
        while True:
            for event in self.events:
                if event["pid"] == pid:
                    return event["returncode"]
            self._read()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Kernel:
    """A forked kernel: its client, pid (= process group) and stderr file."""

    def __init__(self, client: BlockingKernelClient, pid: int, stderr_path: str) -> None:
        self.client, self.pid, self.stderr_path = client, pid, stderr_path

    def run(self, code: str, timeout: float = 60, silent: bool = False) -> tuple[dict, str, list[str]]:
        """(reply content, stream text, execute_result texts)."""
        outputs: list[dict] = []
        reply = self.client.execute_interactive(code, silent=silent, timeout=timeout, output_hook=outputs.append)
        text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
        results = [m["content"]["data"]["text/plain"] for m in outputs if m["msg_type"] == "execute_result"]
        return reply["content"], text, results

    def value(self, expression: str) -> str:
        """The execute_result of ``expression``."""
        content, text, results = self.run(expression)
        assert content["status"] == "ok", content
        return results[0]

    def result_data(self, expression: str) -> dict:
        """The execute_result bundle of ``expression``."""
        outputs: list[dict] = []
        self.client.execute_interactive(expression, timeout=60, output_hook=outputs.append)
        return next(m["content"]["data"] for m in outputs if m["msg_type"] == "execute_result")

    def repr(self, expression: str) -> str:
        """``repr()`` of ``expression`` in the kernel (not pretty-printed)."""
        content, text, _ = self.run(f"print(repr(({expression})))")
        assert content["status"] == "ok", content
        return text.rstrip("\n")

    def private(self, call: str, source: str = SOURCE, name: str = "__kernelexec_fork__") -> str:
        """Run ``source + call`` silently in a private namespace, as the client does; its output."""
        content, text, _ = self.run(packed_exec(source + "\n" + call, name), silent=True)
        assert content["status"] == "ok", content
        return text

    def install_kernelexec(self) -> None:
        self.private("install(100000, None, None, 10**7)", KERNEL_SOURCE, "__kernelexec__")

    def checkpoint(self, path: str) -> dict:
        return json.loads(self.private(f"checkpoint({path!r})").strip().splitlines()[-1])


class Forks:
    """Makes template servers, live kernels and forked kernels in a private directory, and
    kills them all at the end."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kxf-")  # short: AF_UNIX paths are limited
        self.env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8"}
        self.groups: list[int] = []  # process groups to kill: forked kernels, checkpoint servers
        self.clients: list[BlockingKernelClient] = []
        self.templates: list[subprocess.Popen] = []
        self.managers: list[KernelManager] = []
        self.servers: list[Server] = []
        self.count = 0

    def template(self) -> Server:
        path = os.path.join(self.dir, f"t{len(self.templates)}.sock")
        code = SOURCE + f"\nserve_template({path!r})"
        self.templates.append(subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL))
        return self.connect(path)

    def connect(self, path: str) -> Server:
        server = Server(path)
        self.servers.append(server)
        return server

    def live_kernel(self) -> Kernel:
        """A kernel started as kernelexec starts one, with its machinery fds noted."""
        manager = KernelManager(transport="ipc", ip=os.path.join(self.dir, f"live{len(self.managers)}"))
        self.managers.append(manager)
        stderr_path = os.path.join(self.dir, f"live{len(self.managers)}.err")
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # ipykernel checks it
        with open(stderr_path, "w") as stderr:
            manager.start_kernel(extra_arguments=[HISTORY], env=env, stderr=stderr)
        client = manager.client()
        client.start_channels()
        self.clients.append(client)
        client.wait_for_ready(timeout=60)
        kernel = Kernel(client, manager.provisioner.process.pid, stderr_path)
        kernel.private("note_machinery_fds()")
        return kernel

    def checkpoint(self, kernel: Kernel) -> tuple[Server, dict]:
        self.count += 1
        path = os.path.join(self.dir, f"cp{self.count}.sock")
        made = kernel.checkpoint(path)
        self.groups.append(made["pid"])
        return self.connect(path), made

    def fork(self, server: Server, ready: bool = True, **overrides: object) -> Kernel:
        self.count += 1
        name = os.path.join(self.dir, f"k{self.count}")
        connection_file, stderr_path = name + ".json", name + ".err"
        write_connection_file(connection_file, transport="ipc", ip=name, key=secrets.token_hex(16).encode())
        with open(stderr_path, "w"):
            pass
        request = {"op": "fork", "id": str(self.count), "connection_file": connection_file,
                   "stderr_path": stderr_path, "env": self.env, "cwd": None, "argv": [HISTORY]}
        request.update(overrides)
        reply = server.request(**request)
        assert reply["ok"] and reply["id"] == str(self.count), reply
        self.groups.append(reply["pid"])
        client = BlockingKernelClient(connection_file=connection_file)
        client.load_connection_file()
        client.start_channels()
        self.clients.append(client)
        if ready:
            client.wait_for_ready(timeout=60)
        return Kernel(client, reply["pid"], stderr_path)

    def kill(self, kernel: Kernel) -> None:
        kernel.client.stop_channels()
        os.killpg(kernel.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        for client in self.clients:
            client.stop_channels()
        for server in self.servers:
            server.close()
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for manager in self.managers:
            manager.shutdown_kernel(now=True)
        for template in self.templates:
            template.kill()
            template.wait(30)
        wait_gone(self.groups)
        leaked = holders(self.dir)  # a server or kernel nobody knew of (not our descendants)
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        wait_gone(leaked)
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not leaked, f"processes left holding files of the test: {leaked}"


def holders(directory: str) -> list[int]:
    """Live processes (not this one) with a descriptor on a file under ``directory``: every
    server and kernel a test makes has one (a copy's stderr file, its source's)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.status() != psutil.STATUS_ZOMBIE:
                if any(f.path.startswith(directory + "/") for f in process.open_files()):
                    found.append(process.pid)
        except psutil.Error:
            continue
    return found


def wait_for_bytes(path: str, data: bytes, timeout: float = 30) -> None:
    """Wait until the file at ``path`` contains ``data``."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path, "rb") as file:
            if data in file.read():
                return
        assert time.monotonic() < deadline, f"{data!r} never reached {path}"
        time.sleep(0.05)


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"process {pid} is still running")


@pytest.fixture(name="client_loop", scope="module", autouse=True)
def client_loop_fixture() -> Iterator[None]:
    """The event loop jupyter_client's blocking methods make once per thread, made before the
    tests' leak baselines and closed after them."""
    from jupyter_core.utils import ensure_event_loop

    loop = ensure_event_loop()
    yield
    loop.close()


@pytest.fixture(name="forks")
def forks_fixture() -> Iterator[Forks]:
    made = Forks()
    try:
        yield made
    finally:
        made.cleanup()
