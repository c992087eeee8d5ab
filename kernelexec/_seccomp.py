"""The sandbox's seccomp filter: a classic-BPF program that refuses the dangerous system calls.

bubblewrap loads it (``bwrap --seccomp FD``) into the sandboxed kernel just before ``exec``; it is
inherited by everything the kernel starts and cannot be removed. A refused call fails with
``EPERM``, so Python code sees a ``PermissionError`` instead of being killed, and the session stays
usable. Everything not listed is allowed: this is a deny list in the style of Flatpak's and Docker's
default profile, not an allow list, so that numpy, threads, ``fork`` and subprocesses keep working.

The policy is data (:data:`REFUSED`, :data:`NOT_IMPLEMENTED` and :data:`ARGUMENT_RULES` below, with
the reason for each group) and the syscall numbers are per-architecture tables, so what is refused
can be read without reading BPF. ``tests/test_seccomp.py`` checks the tables against the kernel
headers where they are installed, and runs every refused call under bubblewrap.

Layout of the program::

    load arch
    x86_64?  -> x86_64 block      aarch64? -> aarch64 block      else -> kill (foreign ABI)
    each block: load nr; refused? -> EPERM; clone3/openat2? -> ENOSYS; clone, chmod, open,
                personality, ioctl, socket -> their argument check; otherwise allow
    shared tails: the argument checks and the return statements
"""

from __future__ import annotations

import errno
import platform
import struct
import sys
from collections.abc import Iterable

__all__ = ["sandbox_filter", "seccomp_unavailable_reason"]

# Refused outright with EPERM. Group -> (why, names). Names missing on an architecture are listed
# in that architecture's ABSENT set (aarch64 never had the legacy calls).
REFUSED: dict[str, tuple[str, tuple[str, ...]]] = {
    "other processes": (
        "read or control another process's memory, registers or files",
        ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise",
         "kcmp"),
    ),
    "mounts": (
        "change what the file system looks like, and so undo the sandbox's view of it",
        ("mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "open_tree_attr",
         "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr"),
    ),
    "namespaces": (
        "a new user namespace gives full capabilities inside it, the door to most kernel exploits",
        ("unshare", "setns"),
    ),
    "kernel": (
        "load code into the kernel, replace or stop it, or change machine-wide state",
        ("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
         "swapon", "swapoff", "acct", "quotactl", "syslog", "uselib"),
    ),
    "kernel programs": (
        "run code in the kernel or observe other processes through it",
        ("bpf", "perf_event_open"),
    ),
    "keyrings": (
        "the kernel keyrings are not namespaced: they can hold the owner's credentials",
        ("keyctl", "add_key", "request_key"),
    ),
    "exploit helpers": (
        "not needed by Python, and the usual tools of kernel exploits (io_uring also bypasses "
        "this filter for the operations it performs)",
        ("userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "modify_ldt"),
    ),
    "hardware": (
        "direct access to I/O ports",
        ("iopl", "ioperm"),
    ),
    "file handles": (
        "open files by handle, bypassing the path (the classic container escape)",
        ("open_by_handle_at", "name_to_handle_at"),
    ),
}

# Refused with ENOSYS: their interesting arguments are in memory, where a filter cannot look, and
# "not implemented" makes glibc (and anything well written) fall back to the older call, whose
# arguments are checked below.
NOT_IMPLEMENTED: tuple[str, ...] = ("clone3", "openat2")

CLONE_NEW_NAMESPACES = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)  # CLONE_NEWTIME (0x80) cannot be passed to clone(): those bits are the exit signal there.
SETID_BITS = 0o6000  # S_ISUID | S_ISGID
TIOCSTI = 0x5412  # push characters into a terminal's input: the owner's shell would run them
TIOCLINUX = 0x541C  # the same through a virtual console's selection
PER_LINUX = 0
PERSONALITY_QUERY = 0xFFFFFFFF
# Socket families Python code uses: AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6, AF_NETLINK (the
# interface list). Others (packet, vsock, bluetooth, obscure protocols whose modules the kernel
# loads on first use) fail with EAFNOSUPPORT, as under Flatpak.
SOCKET_FAMILIES = (0, 1, 2, 10, 16)

# Calls allowed only with some arguments: name -> (argument index, check). The index is the same
# on both architectures for these calls.
ARGUMENT_RULES: dict[str, tuple[int, str]] = {
    "clone": (0, "no_namespaces"),  # fork, threads and vfork stay allowed
    "chmod": (1, "no_setid"),  # a setuid/setgid file is a way out for whoever runs it later
    "fchmod": (1, "no_setid"),
    "fchmodat": (2, "no_setid"),
    "fchmodat2": (2, "no_setid"),
    "open": (2, "no_setid"),  # the mode of a file created with O_CREAT
    "openat": (3, "no_setid"),
    "creat": (1, "no_setid"),
    "mknod": (1, "no_setid"),
    "mknodat": (2, "no_setid"),
    "personality": (0, "default_personality"),  # e.g. ADDR_NO_RANDOMIZE turns off ASLR
    "ioctl": (1, "no_terminal_injection"),
    "socket": (0, "known_family"),
    "socketpair": (0, "known_family"),
}

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# Syscall numbers: x86_64 from arch/x86/entry/syscalls/syscall_64.tbl, aarch64 from
# include/uapi/asm-generic/unistd.h. Calls added since Linux 5.1 (number 424 on) share one number
# on every architecture.
_SHARED_NEW = {
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "clone3": 435, "openat2": 437, "pidfd_getfd": 438, "process_madvise": 440,
    "mount_setattr": 442, "fchmodat2": 452, "open_tree_attr": 467,
}
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "open": 2, "ioctl": 16, "clone": 56, "creat": 85, "chmod": 90, "fchmod": 91,
        "ptrace": 101, "syslog": 103, "mknod": 133, "uselib": 134, "personality": 135,
        "modify_ldt": 154, "pivot_root": 155, "chroot": 161, "acct": 163, "mount": 165,
        "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172,
        "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
        "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "openat": 257,
        "mknodat": 259, "fchmodat": 268, "unshare": 272, "perf_event_open": 298,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308,
        "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "finit_module": 313,
        "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "socket": 41,
        "socketpair": 53,
        **_SHARED_NEW,
    },
    "aarch64": {
        "mknodat": 33, "ioctl": 29, "umount2": 39, "mount": 40, "pivot_root": 41,
        "fchmod": 52, "fchmodat": 53, "openat": 56, "quotactl": 60, "acct": 89,
        "personality": 92, "unshare": 97, "kexec_load": 104, "init_module": 105,
        "delete_module": 106, "syslog": 116, "ptrace": 117, "reboot": 142, "chroot": 51,
        "add_key": 217, "request_key": 218, "keyctl": 219, "clone": 220, "swapon": 224,
        "swapoff": 225, "perf_event_open": 241, "name_to_handle_at": 264,
        "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270,
        "process_vm_writev": 271, "kcmp": 272, "finit_module": 273, "bpf": 280,
        "userfaultfd": 282, "kexec_file_load": 294, "socket": 198,
        "socketpair": 199,
        **_SHARED_NEW,
    },
}
# Names of the policy an architecture does not have (so a typo in the tables cannot pass silently).
ABSENT: dict[str, frozenset[str]] = {
    "x86_64": frozenset(),
    "aarch64": frozenset({"open", "creat", "chmod", "mknod", "uselib", "modify_ldt", "iopl",
                          "ioperm"}),
}
AUDIT_ARCH = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
BPF_LD_W_ABS = 0x20
BPF_JEQ = 0x15
BPF_JGE = 0x35
BPF_JSET = 0x45
BPF_RET = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
_NR_OFFSET = 0
_ARCH_OFFSET = 4


def _low_word_offset(arg: int) -> int:
    """Offset of the low 32 bits of syscall argument `arg` in struct seccomp_data."""
    return 16 + 8 * arg + (0 if sys.byteorder == "little" else 4)


class _Assembler:
    """Classic BPF with named forward labels: ``jump(BPF_JEQ, k, "deny")``; jt/jf None falls through."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"BPF label {name!r} defined twice")
        self._labels[name] = len(self._code)

    def load(self, offset: int) -> None:
        self._code.append((BPF_LD_W_ABS, None, None, offset))

    def ret(self, value: int) -> None:
        self._code.append((BPF_RET, None, None, value))

    def jump(self, op: int, k: int, jt: str | None, jf: str | None = None) -> None:
        self._code.append((op, jt, jf, k))

    def _offset(self, at: int, label: str | None) -> int:
        if label is None:
            return 0
        distance = self._labels[label] - (at + 1)
        if not 0 <= distance <= 255:
            raise ValueError(f"BPF jump from {at} to {label!r} is {distance}, outside 0..255")
        return distance

    def assemble(self) -> bytes:
        """The program as an array of native-endian ``struct sock_filter {u16, u8, u8, u32}``."""
        return b"".join(
            struct.pack("=HBBI", op, self._offset(at, jt), self._offset(at, jf), k)
            for at, (op, jt, jf, k) in enumerate(self._code)
        )


def _arch_block(asm: _Assembler, arch: str) -> None:
    numbers = SYSCALLS[arch]

    def present(names: Iterable[str]) -> list[int]:
        return [numbers[name] for name in names if name not in ABSENT[arch]]

    asm.label(arch)
    asm.load(_NR_OFFSET)
    if arch == "x86_64":
        # The x32 ABI shares AUDIT_ARCH_X86_64 but has its own numbers; -1 is let through as the
        # kernel answers it with ENOSYS.
        asm.jump(BPF_JGE, X32_SYSCALL_BIT, "x32")
    for nr in present(name for _, names in REFUSED.values() for name in names):
        asm.jump(BPF_JEQ, nr, "deny")
    for nr in present(NOT_IMPLEMENTED):
        asm.jump(BPF_JEQ, nr, "enosys")
    for name, (arg, check) in ARGUMENT_RULES.items():
        if name not in ABSENT[arch]:
            asm.jump(BPF_JEQ, numbers[name], f"{check}_arg{arg}")
    asm.ret(SECCOMP_RET_ALLOW)


def _argument_checks(asm: _Assembler) -> None:
    for check, arg in sorted({(check, arg) for arg, check in ARGUMENT_RULES.values()}):
        asm.label(f"{check}_arg{arg}")
        asm.load(_low_word_offset(arg))
        if check == "no_namespaces":
            asm.jump(BPF_JSET, CLONE_NEW_NAMESPACES, "deny", "allow")
        elif check == "no_setid":
            asm.jump(BPF_JSET, SETID_BITS, "deny", "allow")
        elif check == "default_personality":
            asm.jump(BPF_JEQ, PER_LINUX, "allow")
            asm.jump(BPF_JEQ, PERSONALITY_QUERY, "allow", "deny")
        elif check == "no_terminal_injection":
            asm.jump(BPF_JEQ, TIOCSTI, "deny")
            asm.jump(BPF_JEQ, TIOCLINUX, "deny", "allow")
        elif check == "known_family":
            for family in SOCKET_FAMILIES:
                asm.jump(BPF_JEQ, family, "allow")
            asm.ret(SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT)
        else:
            raise ValueError(f"unknown argument check {check!r}")


def build_filter(refusal_errno: int = errno.EPERM) -> bytes:
    """The program for both architectures; `refusal_errno` is EPERM except in tests."""
    asm = _Assembler()
    asm.load(_ARCH_OFFSET)
    asm.jump(BPF_JEQ, AUDIT_ARCH_X86_64, "x86_64")
    asm.jump(BPF_JEQ, AUDIT_ARCH_AARCH64, "aarch64")
    asm.ret(SECCOMP_RET_KILL_PROCESS)  # i386 or arm32 compat calls: other numbers, unchecked
    for arch in SYSCALLS:
        _arch_block(asm, arch)
    _argument_checks(asm)
    asm.label("x32")
    asm.jump(BPF_JEQ, 0xFFFFFFFF, "allow", "kill")
    asm.label("kill")
    asm.ret(SECCOMP_RET_KILL_PROCESS)
    asm.label("deny")
    asm.ret(SECCOMP_RET_ERRNO | refusal_errno)
    asm.label("enosys")
    asm.ret(SECCOMP_RET_ERRNO | errno.ENOSYS)
    asm.label("allow")
    asm.ret(SECCOMP_RET_ALLOW)
    return asm.assemble()


def seccomp_unavailable_reason() -> str | None:
    """None where :func:`sandbox_filter` applies on this machine (known architecture), else why not."""
    if not sys.platform.startswith("linux"):
        return f"seccomp filters exist only on Linux; this is {sys.platform}"
    machine = platform.machine()
    arch = _MACHINES.get(machine.lower())
    if arch is None:
        known = ", ".join(sorted(set(_MACHINES.values())))
        return f"the sandbox's syscall filter knows {known}, not this machine's {machine!r}"
    if struct.calcsize("P") != 8:
        return f"this Python is 32-bit on a {machine} kernel; the filter covers 64-bit processes only"
    if sys.byteorder != "little":
        return f"the filter covers little-endian {arch} only; this machine is big-endian"
    return None


def sandbox_filter() -> bytes:
    """The sandbox's seccomp program, as bwrap's --seccomp reads it (native-endian sock_filter array).

    Raises RuntimeError (with :func:`seccomp_unavailable_reason`'s text) where the filter does not
    fit this machine: loading it there would kill every process at its first system call.
    """
    reason = seccomp_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"no seccomp filter for this machine: {reason}")
    return build_filter()
