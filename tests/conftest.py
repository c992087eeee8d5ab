"""Shared fixtures: leak checks on every test, a private Jupyter runtime dir, warm sessions."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

import kernelexec as kx

# ZMQ closes a socket's connections in its own I/O thread, later than close() returns.
LEAK_WAIT_SECONDS = 10.0


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")} if os.path.isdir("/proc/self/fd") else set()


def _children() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _command(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()[:4]
    except psutil.Error:
        return [f"pid {process.pid}"]


class Baseline:
    """What of ours exists now: kernel processes, threads, fds, runtime-dir files."""

    def __init__(self) -> None:
        self.runtime_dir = os.environ["JUPYTER_RUNTIME_DIR"]
        self.processes = set(_children())
        self.threads = set(threading.enumerate())
        self.fds = _open_fds()
        self.files = set(os.listdir(self.runtime_dir))

    def _new_fds(self) -> dict[int, str]:
        """Open fds that were not open at the baseline (those closed meanwhile drop out).

        A new connection to a kernel that was already running at the baseline (a module's warm
        session) is not counted: ZMQ makes a connection whose first attempt found no socket yet
        on its own timer, and may remake one on a new fd. (Seen for the stdin socket, which
        sessions now wait for at start; jupyter_client's control socket is made the same way.)
        A test that leaked a connection to an older kernel would go unnoticed.
        """
        new = _describe_fds(_open_fds() - self.fds)
        if any(target.startswith("socket:[") for target in new.values()):
            sockets = _unix_sockets()
            for fd, target in list(new.items()):
                socket = sockets.get(target[len("socket:[") : target.find("]")])
                peer = sockets.get(socket.peer) if socket is not None else None
                if peer is not None and peer.pids & self.processes:
                    del new[fd]
        return new

    def leaks(self) -> list[str]:
        """What appeared since, waiting up to LEAK_WAIT_SECONDS for it to go; kills leftovers."""
        deadline = time.monotonic() + LEAK_WAIT_SECONDS
        while True:
            leaked = {
                pid: p for pid, p in _children().items() if pid not in self.processes and _running(p)
            }
            threads = [t for t in threading.enumerate() if t not in self.threads and t.is_alive()]
            fds = self._new_fds()
            files = set(os.listdir(self.runtime_dir)) - self.files
            if not (leaked or threads or fds or files) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for process in leaked.values():
            try:
                process.kill()
            except psutil.Error:
                pass
        problems: list[str] = []
        if leaked:
            problems.append(f"processes left running: {[_command(p) for p in leaked.values()]}")
        if threads:
            problems.append(f"threads left running: {threads}")
        if fds:
            problems.append(f"file descriptors left open: {fds}")
        if files:
            problems.append(f"files left in the runtime dir: {sorted(files)}")
        return problems


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a kernel process (or its children), a thread, an fd or a
    connection file of ours behind. Module-scoped fixtures are set up before the baseline:
    a module that has them uses ``module_leak_check`` too."""
    baseline = Baseline()
    yield
    problems = baseline.leaks()
    if problems:
        pytest.fail("leak: " + "; ".join(problems))


@pytest.fixture(scope="module")
def module_leak_check(private_runtime_dir: str) -> Iterator[None]:
    """The same check around a whole module, for what its module-scoped fixtures hold."""
    baseline = Baseline()
    yield
    problems = baseline.leaks()
    if problems:
        pytest.fail("leak after the module: " + "; ".join(problems))


def _describe_fds(fds: set[int]) -> dict[int, str]:
    """What each fd points at; an fd some thread closed since it was listed is left out.
    A Unix socket is named by its path, or by the path and process at its other end."""
    described = {}
    for fd in sorted(fds):
        try:
            described[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    if any(target.startswith("socket:[") for target in described.values()):
        sockets = _unix_sockets()
        for fd, target in described.items():
            socket = sockets.get(target[len("socket:[") : target.find("]")])
            if socket is not None:
                described[fd] += f" {socket.describe(sockets.get(socket.peer))}"
    return described


@dataclasses.dataclass
class UnixSocket:
    path: str
    peer: str  # the inode of the other end
    users: str  # as ss shows them: users:(("python",pid=..,fd=..))

    @property
    def pids(self) -> set[int]:
        return {int(pid) for pid in re.findall(r"pid=(\d+)", self.users)}

    def describe(self, peer: UnixSocket | None) -> str:
        if self.path != "*":
            return self.path
        if peer is None:
            return "(unnamed unix socket)"
        return f"(unnamed unix socket; its peer: {peer.path} {peer.users})"


def _unix_sockets() -> dict[str, UnixSocket]:
    """Every Unix socket of the machine by inode, from ``ss``; without it, from /proc/net/unix,
    which names no peers."""
    try:
        table = subprocess.run(["ss", "-xapn"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return _unix_sockets_without_peers()
    sockets = {}
    for row in (line.split() for line in table.splitlines()[1:]):
        if len(row) >= 8:  # Netid State Recv-Q Send-Q Path Inode PeerPath PeerInode [Process]
            sockets[row[5]] = UnixSocket(path=row[4], peer=row[7], users=" ".join(row[8:]))
    return sockets


def _unix_sockets_without_peers() -> dict[str, UnixSocket]:
    sockets = {}
    try:
        with open("/proc/net/unix") as table:
            for fields in (line.split() for line in list(table)[1:]):
                if len(fields) >= 7:  # Num RefCount Protocol Flags Type St Inode [Path]
                    path = fields[7] if len(fields) > 7 else "*"
                    sockets[fields[6]] = UnixSocket(path=path, peer="", users="")
    except OSError:
        pass
    return sockets


@pytest.fixture(autouse=True, scope="session")
def private_runtime_dir() -> Iterator[str]:
    """A short, private JUPYTER_RUNTIME_DIR, so stray connection and IPC files show."""
    path = tempfile.mkdtemp(prefix="kxrt-")
    previous = os.environ.get("JUPYTER_RUNTIME_DIR")
    os.environ["JUPYTER_RUNTIME_DIR"] = path
    yield path
    if previous is None:
        del os.environ["JUPYTER_RUNTIME_DIR"]
    else:
        os.environ["JUPYTER_RUNTIME_DIR"] = previous
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def warm_session(private_runtime_dir: str) -> Iterator[kx.Session]:
    """One running session per test module, for tests where kernel state does not matter."""
    with kx.Session(timeout=30) as session:
        yield session


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args: str, input: str | None = None, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kernelexec ARGS`` on this checkout's code (not an installed copy)."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "kernelexec", *args],
        input=input, capture_output=True, text=True, timeout=timeout, env=env, **kwargs,
    )
