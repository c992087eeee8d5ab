"""The seccomp program itself, run by a small classic-BPF interpreter, for both architectures.

tests/test_seccomp.py loads the filter into a real process, but only for this machine's
architecture; here the aarch64 half, the argument checks and the foreign-ABI paths are checked on
any machine. The syscall tables are compared with the kernel headers where those are installed.
"""

from __future__ import annotations

import errno
import re
import struct
from pathlib import Path

import pytest

from kernelexec import _seccomp
from kernelexec._seccomp import (ABSENT, ARGUMENT_RULES, AUDIT_ARCH, NOT_IMPLEMENTED, REFUSED,
                                 SYSCALLS, build_filter)

ALLOW = _seccomp.SECCOMP_RET_ALLOW
KILL = _seccomp.SECCOMP_RET_KILL_PROCESS
EPERM = _seccomp.SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = _seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS
PROGRAM = build_filter()
ORDINARY = {"x86_64": {"read": 0, "write": 1, "mmap": 9, "getpid": 39, "execve": 59},
            "aarch64": {"read": 63, "write": 64, "mmap": 222, "getpid": 172, "execve": 221}}
HEADERS = {"x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
           "aarch64": Path("/usr/include/asm-generic/unistd.h")}
NEWER_THAN_HEADERS = {"fchmodat2", "open_tree_attr"}  # Linux 6.6 and 6.15


def run_filter(arch: str | int, nr: int, *args: int, program: bytes = PROGRAM) -> int:
    """What the kernel would do with syscall `nr` and `args` (64-bit each) under `program`."""
    audit_arch = AUDIT_ARCH[arch] if isinstance(arch, str) else arch
    data = struct.pack("=IIQ6Q", nr & 0xFFFFFFFF, audit_arch, 0, *args, *[0] * (6 - len(args)))
    code = [struct.unpack_from("=HBBI", program, at) for at in range(0, len(program), 8)]
    pc, accumulator = 0, 0
    for _ in code:  # classic BPF only jumps forward: each instruction runs at most once
        op, jt, jf, k = code[pc]
        if op == _seccomp.BPF_RET:
            return k
        if op == _seccomp.BPF_LD_W_ABS:
            accumulator, pc = struct.unpack_from("=I", data, k)[0], pc + 1
            continue
        taken = {_seccomp.BPF_JEQ: accumulator == k, _seccomp.BPF_JGE: accumulator >= k,
                 _seccomp.BPF_JSET: accumulator & k != 0}[op]
        pc += 1 + (jt if taken else jf)
    raise AssertionError("the program ran off its end")


def present(arch: str, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name not in ABSENT[arch]]


ARCHES = list(SYSCALLS)
REFUSED_NAMES = [name for _, names in REFUSED.values() for name in names]


@pytest.mark.parametrize("arch", ARCHES)
def test_each_refused_call_gets_eperm(arch: str) -> None:
    assert {name: run_filter(arch, SYSCALLS[arch][name]) for name in present(arch, REFUSED_NAMES)} \
        == dict.fromkeys(present(arch, REFUSED_NAMES), EPERM)


@pytest.mark.parametrize("arch", ARCHES)
def test_calls_with_arguments_in_memory_get_enosys(arch: str) -> None:
    for name in NOT_IMPLEMENTED:
        assert run_filter(arch, SYSCALLS[arch][name]) == ENOSYS


@pytest.mark.parametrize("arch", ARCHES)
def test_ordinary_calls_are_allowed(arch: str) -> None:
    for name, nr in ORDINARY[arch].items():
        assert run_filter(arch, nr, 3, 0o777, 0o777, 0o777) == ALLOW, name


@pytest.mark.parametrize("arch", ARCHES)
def test_clone_refuses_namespace_flags_only(arch: str) -> None:
    clone = SYSCALLS[arch]["clone"]
    assert run_filter(arch, clone, 17) == ALLOW  # fork: SIGCHLD
    assert run_filter(arch, clone, 0x003D0F00) == ALLOW  # pthread_create's flags
    assert run_filter(arch, clone, 0x4111) == ALLOW  # CLONE_VM | CLONE_VFORK | SIGCHLD
    for flag in (0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000):
        assert run_filter(arch, clone, flag | 17) == EPERM, hex(flag)


@pytest.mark.parametrize("arch", ARCHES)
def test_modes_with_setuid_or_setgid_are_refused(arch: str) -> None:
    for name, (arg, check) in ARGUMENT_RULES.items():
        if check != "no_setid" or name in ABSENT[arch]:
            continue
        args = [0] * 6
        for mode, verdict in ((0o755, ALLOW), (0o644, ALLOW), (0o4755, EPERM), (0o2755, EPERM),
                              (0o104755, EPERM)):
            args[arg] = mode
            assert run_filter(arch, SYSCALLS[arch][name], *args) == verdict, (name, oct(mode))


@pytest.mark.parametrize("arch", ARCHES)
def test_personality_may_only_be_queried_or_kept_default(arch: str) -> None:
    personality = SYSCALLS[arch]["personality"]
    assert run_filter(arch, personality, 0) == ALLOW
    assert run_filter(arch, personality, 0xFFFFFFFF) == ALLOW
    assert run_filter(arch, personality, 0x0040000) == EPERM  # ADDR_NO_RANDOMIZE
    assert run_filter(arch, personality, 0x0008) == EPERM  # PER_LINUX32


@pytest.mark.parametrize("arch", ARCHES)
def test_terminal_injection_ioctls_are_refused_whatever_the_high_bits(arch: str) -> None:
    ioctl = SYSCALLS[arch]["ioctl"]
    assert run_filter(arch, ioctl, 1, 0x5401) == ALLOW  # TCGETS
    assert run_filter(arch, ioctl, 1, 0x5413) == ALLOW  # TIOCGWINSZ
    for request in (0x5412, 0x541C, 0xFFFFFFFF_00005412):
        assert run_filter(arch, ioctl, 1, request) == EPERM, hex(request)


@pytest.mark.parametrize("arch", ARCHES)
def test_only_common_socket_families_are_allowed(arch: str) -> None:
    refused = _seccomp.SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT
    for name in ("socket", "socketpair"):
        for family, verdict in ((1, ALLOW), (2, ALLOW), (10, ALLOW), (16, ALLOW), (17, refused),
                                (40, refused), (30, refused), (0x1_00000002, ALLOW)):
            assert run_filter(arch, SYSCALLS[arch][name], family, 1, 0) == verdict, (name, family)


def test_foreign_abis_are_killed() -> None:
    assert run_filter(0x40000003, 20) == KILL  # i386 getpid
    assert run_filter(0x40000028, 20) == KILL  # arm (32-bit) getpid
    assert run_filter("x86_64", 0x40000000 | 39) == KILL  # x32 getpid
    assert run_filter("x86_64", 0x40000000 | 101) == KILL  # x32 ptrace
    assert run_filter("x86_64", -1) == ALLOW  # the kernel answers ENOSYS itself


def test_the_errno_is_configurable_for_tests_only() -> None:
    marked = build_filter(133)
    assert run_filter("x86_64", 101, program=marked) == _seccomp.SECCOMP_RET_ERRNO | 133
    assert run_filter("aarch64", 117, program=marked) == _seccomp.SECCOMP_RET_ERRNO | 133


def test_the_program_is_a_loadable_size() -> None:
    assert len(PROGRAM) % 8 == 0 and len(PROGRAM) // 8 < 4096  # BPF_MAXINSNS


def test_a_jump_too_far_for_classic_bpf_is_an_error() -> None:
    asm = _seccomp._Assembler()
    asm.jump(_seccomp.BPF_JEQ, 1, "far")
    for _ in range(256):
        asm.ret(ALLOW)
    asm.label("far")
    asm.ret(KILL)
    with pytest.raises(ValueError, match="outside 0..255"):
        asm.assemble()


@pytest.mark.parametrize("arch", ARCHES)
def test_every_policy_name_is_numbered_or_declared_absent(arch: str) -> None:
    policy = set(REFUSED_NAMES) | set(NOT_IMPLEMENTED) | set(ARGUMENT_RULES)
    assert policy - ABSENT[arch] <= set(SYSCALLS[arch])
    assert not ABSENT[arch] & set(SYSCALLS[arch])
    assert len(set(SYSCALLS[arch].values())) == len(SYSCALLS[arch]), "two names, one number"


@pytest.mark.parametrize("arch", ARCHES)
def test_numbers_match_the_kernel_headers(arch: str) -> None:
    if not HEADERS[arch].exists():
        pytest.skip(f"{HEADERS[arch]} is not installed (linux-libc-dev)")
    text = HEADERS[arch].read_text()
    header = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)\b", text)}
    for name, nr in SYSCALLS[arch].items():
        if name in header or name not in NEWER_THAN_HEADERS:
            assert header.get(name) == nr, name
    for name in ABSENT[arch]:
        assert name not in header, f"{name} exists on {arch}: number it"
