"""Test helpers: what limits a kernel's memory, as seen from inside the kernel."""

from __future__ import annotations

import ast
import os

import kernelexec as kx

# Run in the kernel: ("cgroup", limit) when its memory cgroup has a limit, else ("RLIMIT_AS",
# soft limit) when that is set, else ("none", None).
_WHAT_LIMITS_MEMORY = """
def _kx_memory_limit():
    import resource
    for line in open('/proc/self/cgroup'):
        _, controllers, path = line.rstrip('\\n').split(':', 2)
        if 'memory' in controllers.split(','):
            limit_file = '/sys/fs/cgroup/memory' + path.rstrip('/') + '/memory.limit_in_bytes'
        elif controllers == '':
            limit_file = '/sys/fs/cgroup' + path.rstrip('/') + '/memory.max'
        else:
            continue
        try:
            value = open(limit_file).read().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 2**62:
            return ('cgroup', int(value))
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return ('none', None) if soft == resource.RLIM_INFINITY else ('RLIMIT_AS', soft)
print(repr(_kx_memory_limit()))
del _kx_memory_limit
"""


def memory_limit_in(session: kx.Session) -> tuple[str, int | None]:
    """What limits the memory of ``session``'s kernel, and to how many bytes."""
    result = session.execute(_WHAT_LIMITS_MEMORY)
    assert result.ok, result
    return ast.literal_eval(result.stdout.strip())


def kernel_cgroup_dirs(pid: int) -> list[str]:
    """The cgroup directories (v1 and v2) of kernelexec's own that process ``pid`` is in."""
    mounts = {"pids": "/sys/fs/cgroup/pids", "memory": "/sys/fs/cgroup/memory", "": "/sys/fs/cgroup"}
    dirs = []
    with open(f"/proc/{pid}/cgroup") as cgroups:
        for line in cgroups:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                if controller in mounts and "kernelexec-" in path:
                    dirs.append(os.path.join(mounts[controller], path.lstrip("/")))
    return dirs
