"""Keeping a local kernel's processes together: finding and killing what it started (Linux).

Where this process may create a cgroup (``_cgroups``), every local kernel is moved into one of
its own. Everything the kernel starts lands there too, even what escapes its process group
(``start_new_session=True``, double-forked daemons), so shutdown can kill all of it; with
``max_processes`` the cgroup's ``pids.max`` makes a fork bomb fail with ``BlockingIOError``, even
for root, and with ``memory_limit`` its memory controller stops a kernel that uses more.

Without a cgroup, ``max_processes`` falls back to ``RLIMIT_NPROC`` set by the kernel on itself
(binding for ordinary users only: it counts all of the user's processes), ``memory_limit`` to
``RLIMIT_AS`` (address space, see ``_kernel_side``), and cleanup kills the kernel's process group
plus the descendants seen just before the kernel is stopped (the helpers here).
"""

from __future__ import annotations

import os
import signal

from ._errors import KernelStartError


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
