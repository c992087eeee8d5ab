"""Try each system call the sandbox's filter refuses; print {probe: outcome} as JSON.

Run as ``python seccomp_probes.py WORKDIR`` (WORKDIR writable), under bubblewrap with or without
the filter. Each probe runs in a forked child so that what one changes (a personality, a new
namespace, a tracee) cannot affect the next, and reports through the child's exit status:
0 when the call succeeded, its errno when it failed, minus the signal number when the child was
killed (the filter kills foreign-ABI calls with SIGSYS).

The arguments are chosen so that an allowed call is harmless: it fails on a path that does not
exist, a bad fd or a bad flag combination (the kernel checks those before doing anything), or it
acts only on the probe's own child, file or pty.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import platform
import signal
import socket
import stat
import sys
import termios
from collections.abc import Callable

from kernelexec._seccomp import SYSCALLS

ARCH = {"x86_64": "x86_64", "aarch64": "aarch64"}[platform.machine()]
NR = SYSCALLS[ARCH]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
MISSING = b"/nonexistent-kernelexec-probe"
AT_FDCWD = -100
SETUID_MODE = 0o4755
SETGID_MODE = 0o2755
CLONE_SIGHAND = 0x800  # without CLONE_VM the kernel refuses it (EINVAL) before making a process
NAMESPACE_FLAGS = {"NEWNS": 0x20000, "NEWCGROUP": 0x2000000, "NEWUTS": 0x4000000,
                   "NEWIPC": 0x8000000, "NEWUSER": 0x10000000, "NEWPID": 0x20000000,
                   "NEWNET": 0x40000000}
WORKDIR = sys.argv[1] if len(sys.argv) > 1 else "/tmp"


def _errno_of(result: int) -> int:
    return ctypes.get_errno() if result == -1 else 0


def sys_call(name: str, *args: int | bytes | None) -> Callable[[], int]:
    """A probe making the raw system call `name`, numbered from the filter's own table."""
    def probe() -> int:
        return _errno_of(libc.syscall(ctypes.c_long(NR[name]), *(_arg(a) for a in args)))
    return probe


def _arg(value: int | bytes | None) -> ctypes.c_long | bytes | None:
    return ctypes.c_long(value) if isinstance(value, int) else value


def python_call(call: Callable[[], object]) -> Callable[[], int]:
    """A probe doing it the way Python code would: OSError's errno, or 0."""
    def probe() -> int:
        try:
            call()
        except OSError as error:
            return error.errno or 255
        return 0
    return probe


def fresh(name: str) -> bytes:
    """A path in WORKDIR that does not exist yet."""
    path = os.path.join(WORKDIR, name)
    if os.path.lexists(path):
        os.unlink(path)
    return path.encode()


def plain_file(name: str) -> bytes:
    path = fresh(name)
    with open(path, "w"):
        pass
    return path


def ptrace_attach() -> int:
    """PTRACE_ATTACH to our own sleeping child (allowed without the filter, even for non-root)."""
    child = os.fork()
    if child == 0:
        signal.pause()
        os._exit(0)
    try:
        return _errno_of(libc.ptrace(ctypes.c_long(16), ctypes.c_long(child), None, None))
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def process_vm(name: str) -> Callable[[], int]:
    """Copy 8 bytes between two of our own buffers through process_vm_readv/writev."""
    def probe() -> int:
        source, target = ctypes.create_string_buffer(b"kx-probe"), ctypes.create_string_buffer(8)
        local = IoVec(ctypes.addressof(target), 8)
        remote = IoVec(ctypes.addressof(source), 8)
        if name == "process_vm_writev":
            local, remote = remote, local
        return _errno_of(libc.syscall(ctypes.c_long(NR[name]), ctypes.c_long(os.getpid()),
                                      ctypes.byref(local), ctypes.c_long(1), ctypes.byref(remote),
                                      ctypes.c_long(1), ctypes.c_long(0)))
    return probe


def terminal_ioctl(request: int) -> Callable[[], int]:
    """ioctl(request) on a pty of our own, with a one-byte argument (TIOCSTI's)."""
    def probe() -> int:
        leader, follower = os.openpty()
        try:
            byte = ctypes.c_char(b"#")
            return _errno_of(libc.syscall(ctypes.c_long(NR["ioctl"]), ctypes.c_long(follower),
                                          ctypes.c_ulong(request), ctypes.byref(byte)))
        finally:
            os.close(leader)
            os.close(follower)
    return probe


def i386_getpid() -> int:
    """getpid through the i386 ABI (int 0x80) from this 64-bit process."""
    code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")  # mov eax, 20; int 0x80; ret
    address = ctypes.addressof(ctypes.c_char.from_buffer(code))
    result = ctypes.CFUNCTYPE(ctypes.c_int)(address)()
    return 0 if result == os.getpid() else 255


def clone_flags(flags: int) -> Callable[[], int]:
    # clone(flags, stack, parent_tid, child_tid, tls); every flag set used here is invalid.
    return sys_call("clone", flags | CLONE_SIGHAND, 0, 0, 0, 0)


PROBES: dict[str, Callable[[], int]] = {
    "ptrace": ptrace_attach,
    "process_vm_readv": process_vm("process_vm_readv"),
    "process_vm_writev": process_vm("process_vm_writev"),
    "pidfd_getfd": sys_call("pidfd_getfd", -1, 0, 0),
    "process_madvise": sys_call("process_madvise", -1, None, 0, 0, 0),
    "kcmp": lambda: sys_call("kcmp", os.getpid(), os.getpid(), 0, 0, 0)(),  # KCMP_FILE
    "mount": sys_call("mount", b"none", MISSING, b"tmpfs", 0, None),
    "umount2": sys_call("umount2", MISSING, 0),
    "pivot_root": sys_call("pivot_root", MISSING, MISSING),
    "chroot": sys_call("chroot", MISSING),
    "move_mount": sys_call("move_mount", -1, b"", -1, b"", 0),
    "open_tree": sys_call("open_tree", -1, b"", 0),
    "open_tree_attr": sys_call("open_tree_attr", -1, b"", 0, None, 0),
    "fsopen": sys_call("fsopen", b"kernelexec-no-such-fs", 0),
    "fsmount": sys_call("fsmount", -1, 0, 0),
    "fsconfig": sys_call("fsconfig", -1, 0, None, None, 0),
    "fspick": sys_call("fspick", -1, b"", 0),
    "mount_setattr": sys_call("mount_setattr", -1, b"", 0, None, 0),
    "unshare": sys_call("unshare", NAMESPACE_FLAGS["NEWUSER"]),
    "setns": sys_call("setns", -1, 0),
    "kexec_load": sys_call("kexec_load", 0, 0, None, 0x8000),  # 0x8000: no such flag
    "kexec_file_load": sys_call("kexec_file_load", -1, -1, 0, None, 0x8000),
    "init_module": sys_call("init_module", None, 0, b""),
    "finit_module": sys_call("finit_module", -1, b"", 0),
    "delete_module": sys_call("delete_module", b"kernelexec_no_such_module", 0),
    "reboot": sys_call("reboot", 0, 0, 0, None),  # wrong magic numbers: EINVAL
    "swapon": sys_call("swapon", MISSING, 0),
    "swapoff": sys_call("swapoff", MISSING),
    "acct": sys_call("acct", MISSING),
    "quotactl": sys_call("quotactl", 0, MISSING, 0, None),
    "syslog": sys_call("syslog", 10, None, 0),  # SYSLOG_ACTION_SIZE_BUFFER: read-only
    "bpf": sys_call("bpf", 0xFFFF, None, 0),
    "perf_event_open": sys_call("perf_event_open", None, 0, -1, -1, 0),
    "keyctl": sys_call("keyctl", 0, -4, 0),  # KEYCTL_GET_KEYRING_ID of the user keyring
    "add_key": sys_call("add_key", b"kernelexec-no-such-type", b"x", None, 0, -2),
    "request_key": sys_call("request_key", b"user", b"kernelexec-no-such-key", None, 0),
    "userfaultfd": sys_call("userfaultfd", 1),  # UFFD_USER_MODE_ONLY
    "io_uring_setup": sys_call("io_uring_setup", 1, None),
    "io_uring_enter": sys_call("io_uring_enter", -1, 0, 0, 0, None, 0),
    "io_uring_register": sys_call("io_uring_register", -1, 0, None, 0),
    "open_by_handle_at": sys_call("open_by_handle_at", -1, None, 0),
    "name_to_handle_at": sys_call("name_to_handle_at", AT_FDCWD, b"/", None, None, 0),
    "clone3": sys_call("clone3", None, 0),
    "openat2": sys_call("openat2", AT_FDCWD, b"/", None, 0),
    **{f"clone_{flag}": clone_flags(value) for flag, value in NAMESPACE_FLAGS.items()},
    "clone_plain": clone_flags(0),  # allowed by the filter: EINVAL from the kernel
    "fchmod_setuid": lambda: python_call(
        lambda: os.fchmod(os.open(plain_file("fchmod"), os.O_RDONLY), SETUID_MODE))(),
    "fchmodat_setgid": lambda: sys_call("fchmodat", AT_FDCWD, plain_file("fchmodat"),
                                        SETGID_MODE)(),
    "fchmodat2_setuid": lambda: sys_call("fchmodat2", AT_FDCWD, plain_file("fchmodat2"),
                                         SETUID_MODE, 0)(),
    "openat_setuid": lambda: sys_call("openat", AT_FDCWD, fresh("openat"),
                                      os.O_CREAT | os.O_WRONLY, SETUID_MODE)(),
    "mknodat_setuid": lambda: sys_call("mknodat", AT_FDCWD, fresh("mknodat"),
                                       stat.S_IFREG | SETUID_MODE, 0)(),
    "python_chmod_setuid": lambda: python_call(lambda: os.chmod(plain_file("chmod"), SETUID_MODE))(),
    "python_open_setuid": lambda: python_call(
        lambda: os.open(fresh("open"), os.O_CREAT | os.O_WRONLY, SETUID_MODE))(),
    "python_mount": lambda: python_call(lambda: _check(libc.mount(b"none", WORKDIR.encode(),
                                                                  b"tmpfs", 0, None)))(),
    "python_tiocsti": lambda: python_call(lambda: _tiocsti_python())(),
    "personality": sys_call("personality", 0x0040000),  # ADDR_NO_RANDOMIZE
    "tiocsti": terminal_ioctl(termios.TIOCSTI),
    "tiocsti_high_bits": terminal_ioctl(0x1_0000_0000 | termios.TIOCSTI),  # the kernel drops them
    "tioclinux": terminal_ioctl(0x541C),
    "socket_packet": sys_call("socket", 17, 2, 0),  # AF_PACKET, SOCK_DGRAM
    "socketpair_packet": sys_call("socketpair", 17, 2, 0, None),
    "python_socket_packet": python_call(lambda: socket.socket(17, socket.SOCK_DGRAM).close()),
}
if ARCH == "x86_64":
    PROBES.update({
        "modify_ldt": sys_call("modify_ldt", 0, None, 0),
        "iopl": sys_call("iopl", 0),
        "ioperm": sys_call("ioperm", 0, 1, 0),
        "uselib": sys_call("uselib", MISSING),
        "chmod_setuid": lambda: sys_call("chmod", plain_file("chmod-raw"), SETUID_MODE)(),
        "open_setuid": lambda: sys_call("open", fresh("open-raw"), os.O_CREAT | os.O_WRONLY,
                                        SETUID_MODE)(),
        "creat_setgid": lambda: sys_call("creat", fresh("creat"), SETGID_MODE)(),
        "mknod_setuid": lambda: sys_call("mknod", fresh("mknod"), stat.S_IFREG | SETUID_MODE,
                                         0)(),
        "x32_getpid": lambda: _errno_of(libc.syscall(ctypes.c_long(0x40000000 | 39))),
        "i386_getpid": i386_getpid,
    })


def _check(result: int) -> None:
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def _tiocsti_python() -> None:
    leader, follower = os.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSTI, b"#")
    finally:
        os.close(leader)
        os.close(follower)


def run(probe: Callable[[], int]) -> int:
    child = os.fork()
    if child == 0:
        try:
            code = probe()
        except BaseException as error:  # reported, so that a broken probe shows as one
            print(f"probe raised {error!r}", file=sys.stderr)
            code = 254
        os._exit(min(code, 253))
    status = os.waitpid(child, 0)[1]
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


if __name__ == "__main__":
    names = sys.argv[2:] or list(PROBES)
    print(json.dumps({name: run(PROBES[name]) for name in names}))
