"""Process-count limits for local kernels (Linux).

``max_processes`` caps how many processes and threads a kernel and everything it starts may have,
so a fork bomb in user code fails with ``BlockingIOError``/``OSError`` instead of taking the machine.
Where this process may create a cgroup with the ``pids`` controller (cgroup v2 with the controller
delegated, or v1), the kernel is moved into its own cgroup with ``pids.max``; that binds even for
root. Otherwise the kernel sets ``RLIMIT_NPROC`` on itself, which binds for ordinary users only
(it counts all of the user's processes). Memory is limited in the kernel itself (RLIMIT_AS, see
``_kernel_side``), which turns an over-allocation into a clean ``MemoryError``.
"""

from __future__ import annotations

import os
import time

from ._errors import KernelStartError

_V1_ROOT = "/sys/fs/cgroup/pids"
_V2_ROOT = "/sys/fs/cgroup"


class PidsCgroup:
    """A pids cgroup holding one kernel; removed again when the kernel is gone."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, name: str, max_processes: int) -> PidsCgroup | None:
        """A new cgroup limited to ``max_processes``, or ``None`` where none can be made."""
        for parent in _candidate_parents():
            path = os.path.join(parent, name)
            try:
                os.mkdir(path)
            except OSError:
                continue
            try:
                _write(os.path.join(path, "pids.max"), str(max_processes))
            except OSError:
                os.rmdir(path)
                continue
            return cls(path)
        return None

    def add(self, pid: int) -> None:
        _write(os.path.join(self.path, "cgroup.procs"), str(pid))

    def remove(self, wait: float = 2.0) -> None:
        """Remove the cgroup; its processes must be gone (killed ones may take a moment)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)


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
