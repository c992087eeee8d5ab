"""A cgroup per local kernel (Linux): its processes kept together, counted and limited.

``KernelCgroup.create`` makes one directory per hierarchy that holds a controller it needs:
``pids`` always (containment, ``max_processes``), ``memory`` when there is a ``memory_limit``.
With cgroup v1 that is one directory in each controller's hierarchy; with v2 one directory with
both controllers (enabled in the parent's ``cgroup.subtree_control`` where they are not yet and
can be). Where each goes is ``Hierarchy.parents``.

The memory limit counts memory the kernel's processes touch (anonymous memory and page cache,
not address space): v1 ``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes`` (so swap
does not dodge it), v2 ``memory.max`` and ``memory.swap.max = 0``. Over it, the kernel's
out-of-memory killer stops the largest process in the cgroup, and ``oom_kills()`` says so.
Memory is charged to the cgroup of the process that first touches it: pages a forked kernel
shares with its template or checkpoint stay charged where they were first written.

``KERNELEXEC_CGROUPS`` (comma-separated controllers, default ``pids,memory``; ``none``) restricts
which controllers kernelexec may use, e.g. to use the fallbacks (``RLIMIT_NPROC``, ``RLIMIT_AS``)
on purpose.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from ._containment import kill_all

log = logging.getLogger("kernelexec")

MOUNTINFO = "/proc/self/mountinfo"
OWN_CGROUPS = "/proc/self/cgroup"
CONTROLLERS_VARIABLE = "KERNELEXEC_CGROUPS"


@dataclass(frozen=True)
class Hierarchy:
    """A mounted cgroup hierarchy: where it is, which controllers it has, where we are in it."""

    mount: str
    controllers: frozenset[str]
    own: str  # this process's cgroup, as a directory under ``mount`` (``mount`` if not visible)
    version: int

    def parents(self) -> list[str]:
        """Where a kernel's directory may go, in order. v1: the root (as root; a kernel's limits
        are its own), else our own cgroup (delegated to us). v2: our own cgroup (delegated), else
        the root, the only cgroup that may enable controllers while it holds processes."""
        if self.own == self.mount:
            return [self.mount]
        return [self.mount, self.own] if self.version == 1 else [self.own, self.mount]


def hierarchies(mountinfo: str, own_cgroups: str) -> list[Hierarchy]:
    """The cgroup hierarchies of ``/proc/self/mountinfo`` text, with our place in each (from
    ``/proc/self/cgroup`` text). v2's controllers are those its root offers."""
    own_paths: dict[str, str] = {}
    for line in own_cgroups.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            own_paths[parts[1] or "0"] = parts[2]
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        root, mount = fields[3], fields[4]
        fstype, _, superoptions = line.split(" - ", 1)[1].split()[:3]
        if fstype == "cgroup":
            controllers = frozenset(superoptions.split(",")) - {"rw", "ro"}  # and options, harmless
            key = next((k for k in own_paths if k != "0" and set(k.split(",")) <= controllers), None)
            version = 1
        elif fstype == "cgroup2":
            controllers = frozenset(_read(os.path.join(mount, "cgroup.controllers")).split())
            key, version = "0", 2
        else:
            continue
        own = own_paths.get(key) if key else None
        found.append(Hierarchy(mount, controllers, _under(mount, root, own), version))
    return found


def _under(mount: str, root: str, own: str | None) -> str:
    if own is None:
        return mount
    root = root.rstrip("/")
    if own != root and not own.startswith(root + "/"):
        return mount
    return os.path.join(mount, own[len(root):].lstrip("/")).rstrip("/") or mount


def allowed_controllers() -> set[str]:
    value = os.environ.get(CONTROLLERS_VARIABLE, "pids,memory")
    return {name.strip() for name in value.split(",")} & {"pids", "memory"}


class KernelCgroup:
    """The cgroup directories of one kernel (or checkpoint); removed with ``kill_and_remove``."""

    def __init__(self, paths: list[str], pids_path: str | None, memory_path: str | None,
                 memory_limit: int | None, version: dict[str, int]) -> None:  # fmt: skip
        self.paths = paths
        self.pids_path = pids_path
        self.memory_path = memory_path  # set only when memory_limit is enforced there
        self.memory_limit = memory_limit if memory_path is not None else None
        self._version = version

    @classmethod
    def create(cls, name: str, *, max_processes: int | None, memory_limit: int | None,
               found: list[Hierarchy] | None = None) -> KernelCgroup | None:  # fmt: skip
        """Directories named ``name`` with the limits given, or ``None`` where none can be made.

        A controller that cannot be had is left out: the caller falls back for its limit.
        """
        wanted = allowed_controllers() if memory_limit is not None else allowed_controllers() - {"memory"}
        if not wanted:
            return None
        if found is None:
            found = hierarchies(_read(MOUNTINFO), _read(OWN_CGROUPS))
        made: dict[str, str] = {}  # controller -> directory
        version: dict[str, int] = {}
        for hierarchy in sorted(found, key=lambda h: h.version):  # v1 first: v2 has them only if v1 does not
            needed = sorted((wanted & hierarchy.controllers) - set(made))
            if not needed:
                continue
            path, granted = _make(hierarchy, name, needed)
            if path is None:
                continue
            granted = [c for c in granted if _set_limit(path, c, hierarchy.version, max_processes, memory_limit)]
            for controller in granted:
                made[controller] = path
                version[path] = hierarchy.version
            if not granted:
                _remove(path)
        if not made:
            return None
        paths = list(dict.fromkeys(made.values()))
        cgroup = cls(paths, made.get("pids"), made.get("memory"), memory_limit, version)
        log.debug("kernel cgroup %s (controllers: %s)", " ".join(paths), ", ".join(sorted(made)))
        return cgroup

    def procs_files(self) -> list[str]:
        return [os.path.join(path, "cgroup.procs") for path in self.paths]

    def add(self, pid: int) -> None:
        """Move ``pid`` in; a directory it cannot join is removed, with what it controls."""
        for path in list(self.paths):
            try:
                _write(os.path.join(path, "cgroup.procs"), str(pid))
            except OSError as error:
                log.debug("cannot move the kernel into %s: %s", path, error)
                self.paths.remove(path)
                _remove(path)
                if self.pids_path == path:
                    self.pids_path = None
                if self.memory_path == path:
                    self.memory_path = self.memory_limit = None

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs_files():
            found.update(int(line) for line in _read(procs).split())
        return sorted(found)

    def oom_kills(self) -> int:
        """How many processes the out-of-memory killer stopped in this cgroup."""
        if self.memory_path is None:
            return 0
        events = "memory.oom_control" if self._version[self.memory_path] == 1 else "memory.events"
        for line in _read(os.path.join(self.memory_path, events)).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def kill_and_remove(self, wait: float = 2.0) -> None:
        """SIGKILL every process in the cgroup, then remove it (dying processes take a moment)."""
        deadline, pause = time.monotonic() + wait, 0.0005
        left = list(self.paths)
        while left:
            kill_all(self.pids())
            left = [path for path in left if not _remove(path)]
            if not left or time.monotonic() > deadline:
                return
            time.sleep(pause)  # a killed process leaves in well under a millisecond, mostly
            pause = min(pause * 2, 0.01)


def _make(hierarchy: Hierarchy, name: str, needed: list[str]) -> tuple[str | None, list[str]]:
    """A new directory in ``hierarchy`` and which of ``needed`` it has."""
    for parent in hierarchy.parents():
        if hierarchy.version == 2:
            granted = _enable_v2(parent, needed)
            if not granted:
                continue
        else:
            granted = needed
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
        except OSError:
            continue
        return path, granted
    return None, []


def _enable_v2(parent: str, needed: list[str]) -> list[str]:
    """Which of ``needed`` the children of ``parent`` get, enabling those it can."""
    enabled = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
    for controller in needed:
        if controller not in enabled:
            try:  # refused (EBUSY) in a cgroup that holds processes itself, unless it is the root
                _write(os.path.join(parent, "cgroup.subtree_control"), f"+{controller}")
            except OSError:
                continue
            enabled.add(controller)
    return [controller for controller in needed if controller in enabled]


def _set_limit(path: str, controller: str, version: int, max_processes: int | None, memory_limit: int | None) -> bool:
    try:
        if controller == "pids" and max_processes is not None:
            _write(os.path.join(path, "pids.max"), str(max_processes))
        elif controller == "memory" and memory_limit is not None:
            limit, swap = (("memory.limit_in_bytes", "memory.memsw.limit_in_bytes") if version == 1
                           else ("memory.max", "memory.swap.max"))  # fmt: skip
            _write(os.path.join(path, limit), str(memory_limit))
            if os.path.exists(os.path.join(path, swap)):
                _write(os.path.join(path, swap), str(memory_limit) if version == 1 else "0")
    except OSError as error:
        log.debug("cannot set the %s limit in %s: %s", controller, path, error)
        return False
    return True


def _remove(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)
