"""Keeping a local kernel's processes together: process-count limits and complete cleanup (Linux).

Where this process may create a cgroup with the ``pids`` controller (cgroup v1, or v2 with the
controller delegated), every local kernel is moved into a cgroup of its own. Everything the
kernel starts lands there too, even what escapes its process group (``start_new_session=True``,
double-forked daemons), so shutdown can kill all of it; with ``max_processes`` the cgroup's
``pids.max`` makes a fork bomb fail with ``BlockingIOError``, even for root.

Without a cgroup, ``max_processes`` falls back to ``RLIMIT_NPROC`` set by the kernel on itself
(binding for ordinary users only: it counts all of the user's processes), and cleanup kills the
kernel's process group plus the descendants seen just before the kernel is stopped.
Memory is limited in the kernel itself (RLIMIT_AS, see ``_kernel_side``).
"""

from __future__ import annotations

import os
import signal
import time

from ._errors import KernelStartError

_V1_ROOT = "/sys/fs/cgroup/pids"
_V2_ROOT = "/sys/fs/cgroup"


class PidsCgroup:
    """A pids cgroup holding one kernel and what it starts; removed when the kernel is gone."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, name: str, max_processes: int | None) -> PidsCgroup | None:
        """A new cgroup (limited to ``max_processes`` if given), or ``None`` where none can be made."""
        for parent in _candidate_parents():
            path = os.path.join(parent, name)
            try:
                os.mkdir(path)
            except OSError:
                continue
            try:
                if max_processes is not None:
                    _write(os.path.join(path, "pids.max"), str(max_processes))
            except OSError:
                os.rmdir(path)
                continue
            return cls(path)
        return None

    def add(self, pid: int) -> None:
        _write(os.path.join(self.path, "cgroup.procs"), str(pid))

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as procs:
                return [int(line) for line in procs if line.strip()]
        except OSError:
            return []

    def kill_and_remove(self, wait: float = 2.0) -> None:
        """SIGKILL every process in the cgroup, then remove it (dying processes take a moment)."""
        deadline, pause = time.monotonic() + wait, 0.0005
        while True:
            kill_all(self.pids())
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(pause)  # a killed process leaves in well under a millisecond, mostly
                pause = min(pause * 2, 0.01)


def descendants(pid: int) -> dict[int, bytes]:
    """Every living descendant of ``pid``, by pid, with its start time (read from /proc)."""
    children: dict[int, list[tuple[int, bytes]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found: dict[int, bytes] = {}
    pending = [pid]
    while pending:
        for child, started in children.get(pending.pop(), ()):
            found[child] = started
            pending.append(child)
    return found


def kill_unchanged(processes: dict[int, bytes]) -> None:
    """SIGKILL the processes of a ``descendants`` snapshot that are still the same processes."""
    kill_all([pid for pid, started in processes.items() if _start_time(pid) == started])


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _stat_fields(pid: int) -> list[bytes]:
    """/proc/PID/stat after the command name: state, ppid, ... (field 22 of stat is index 19)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> bytes | None:
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else None


def process_limit_for_root_unavailable() -> KernelStartError:
    return KernelStartError(
        "max_processes cannot be enforced here: no pids cgroup can be created and RLIMIT_NPROC does "
        "not bind for root. Run as an ordinary user, delegate a cgroup with the pids controller, or "
        "leave max_processes unset."
    )


def _candidate_parents() -> list[str]:
    parents = []
    if os.path.isfile(os.path.join(_V1_ROOT, "pids.max")) or os.path.isfile(
        os.path.join(_V1_ROOT, "cgroup.procs")
    ):
        parents.append(_V1_ROOT)
    own = _own_v2_cgroup()
    if own is not None:
        parents.append(own)
    return parents


def _own_v2_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup") as cgroups:
            for line in cgroups:
                if line.startswith("0::"):
                    path = os.path.join(_V2_ROOT, line[3:].strip().lstrip("/"))
                    controllers = os.path.join(path, "cgroup.subtree_control")
                    with open(controllers) as enabled:
                        return path if "pids" in enabled.read().split() else None
    except OSError:
        return None
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)
