"""memory_limit with real kernels: a memory cgroup where one can be made, RLIMIT_AS otherwise.

Over the limit, a kernel in a memory cgroup is stopped by the out-of-memory killer: the call is
``died`` with a cause naming the limit, and the session goes on with a new kernel (limited the
same way). The fallback (``KERNELEXEC_CGROUPS=pids`` imitates a machine without a memory cgroup)
is ``RLIMIT_AS``: a ``MemoryError`` in the call.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT
from memory_limits import kernel_cgroup_dirs, memory_limit_in

import kernelexec as kx
from kernelexec._cgroups import Hierarchy, KernelCgroup, hierarchies
from kernelexec._launch import _memory_limit_too_small

pytestmark = pytest.mark.timeout(120)

MiB = 2**20
# bytearray(n) zero-fills its buffer (memset), so every page is touched; b'x' * n writes each byte.
BIG_BYTEARRAY = "blob = bytearray(2 * 1024**3)"
TOUCHING_LOOP = "chunks = []\nfor _ in range(400):\n    chunks.append(b'x' * (10 * 2**20))"


def _memory_cgroup_available() -> bool:
    probe = KernelCgroup.create(f"kernelexec-probe-{os.getpid()}", max_processes=None, memory_limit=256 * MiB)
    if probe is None:
        return False
    probe.kill_and_remove()
    return probe.memory_path is not None


needs_memory_cgroup = pytest.mark.skipif(
    not _memory_cgroup_available(), reason="this process cannot create a memory cgroup"
)


def kernel_pid(session: kx.Session) -> int:
    return session.async_session._state.kernel.pid


@needs_memory_cgroup
@pytest.mark.parametrize("launcher", ["fork", "spawn"])
@pytest.mark.parametrize("limit_mib", [256, 512])
@pytest.mark.parametrize("code", [BIG_BYTEARRAY, TOUCHING_LOOP], ids=["bytearray", "loop"])
def test_a_kernel_over_its_memory_limit_is_stopped_and_the_session_goes_on(launcher, limit_mib, code):
    with kx.Session(memory_limit=limit_mib * MiB, launcher=launcher, timeout=30) as s:
        assert memory_limit_in(s) == ("cgroup", limit_mib * MiB)
        started = time.monotonic()
        r = s.execute(code)
        elapsed = time.monotonic() - started
        assert r.exec_time < 5, r  # until the death was seen; then the new kernel starts
        assert elapsed < 60, f"{elapsed:.1f} s: {r}"
        assert r.status == "died" and r.restarted, r
        assert r.error.evalue.startswith(
            f"the kernel used more than its memory_limit of {limit_mib} MiB and was stopped by the "
            "out-of-memory killer during this call; the kernel was restarted"
        ), r.error.evalue
        assert s.execute("1 + 1").result == "2"
        assert memory_limit_in(s) == ("cgroup", limit_mib * MiB)  # the new kernel is limited too


@needs_memory_cgroup
def test_a_subprocess_killed_for_memory_earlier_is_not_blamed_for_a_later_death():
    """The cgroup's OOM-kill count only grows: a kill in an earlier call (here a subprocess's,
    the kernel survives it) says nothing about how the kernel died later."""
    with kx.Session(memory_limit=256 * MiB, timeout=60) as s:
        r = s.execute("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'b = bytearray(2**30)']).returncode")
        assert r.ok and r.result == str(-signal.SIGKILL), r
        r = s.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        assert r.status == "died" and "memory_limit" not in r.error.evalue, r.error.evalue
        assert "SIGKILL" in r.error.evalue, r.error.evalue


@needs_memory_cgroup
def test_memory_under_the_limit_can_be_used():
    with kx.Session(memory_limit=256 * MiB) as s:
        r = s.execute("blob = b'x' * (150 * 2**20)\nlen(blob)")
        assert r.ok and r.result == str(150 * MiB), r


@needs_memory_cgroup
def test_keep_state_on_restart_restores_the_state_after_a_kernel_over_its_limit():
    with kx.Session(memory_limit=256 * MiB, keep_state_on_restart=True, timeout=30) as s:
        s.execute("kept = 41")
        r = s.execute(BIG_BYTEARRAY)
        assert r.status == "died" and r.restarted and r.state_restored, r
        assert "memory_limit of 256 MiB" in r.error.evalue
        assert s.execute("kept + 1").result == "42"
        assert memory_limit_in(s) == ("cgroup", 256 * MiB)


@needs_memory_cgroup
def test_a_checkpoint_restores_after_a_kernel_over_its_limit():
    with kx.Session(memory_limit=256 * MiB, timeout=30) as s:
        s.execute("kept = 41")
        with s.checkpoint() as cp:
            assert s.execute(TOUCHING_LOOP).status == "died"
            s.restore(cp)
            assert s.execute("kept + 1").result == "42"
            assert memory_limit_in(s) == ("cgroup", 256 * MiB)
            assert s.execute(BIG_BYTEARRAY).status == "died"  # a restored kernel is limited too


@needs_memory_cgroup
def test_the_cgroups_of_kernels_forks_and_checkpoints_are_removed_at_shutdown():
    with kx.Session(memory_limit=512 * MiB, timeout=30) as s:
        child = s.fork()
        cp = s.checkpoint()
        owners = {"kernel": kernel_pid(s), "fork": kernel_pid(child), "checkpoint": cp.pid}
        dirs = {name: kernel_cgroup_dirs(pid) for name, pid in owners.items()}
        for name, found in dirs.items():
            assert len(found) == 2 and all(os.path.isdir(d) for d in found), (name, found)
            memory = next(d for d in found if "/memory/" in d)
            with open(os.path.join(memory, "memory.limit_in_bytes")) as limit:
                assert int(limit.read()) == 512 * MiB, name
        assert memory_limit_in(child) == ("cgroup", 512 * MiB)
        cp.close()
        assert not any(os.path.exists(d) for d in dirs["checkpoint"])
        child.shutdown()
        assert not any(os.path.exists(d) for d in dirs["fork"])
    assert not any(os.path.exists(d) for d in dirs["kernel"])


OWNER = """
import sys, time
import kernelexec as kx
s = kx.Session(memory_limit=256 * 2**20).start()
print(s.execute("import os; os.getpid()").result, flush=True)
time.sleep(600)
"""


@needs_memory_cgroup
def test_the_cgroups_of_a_sigkilled_owners_kernel_are_removed(tmp_path):
    (tmp_path / "owner.py").write_text(OWNER)
    owner = subprocess.Popen([sys.executable, str(tmp_path / "owner.py")], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=REPO_ROOT))  # fmt: skip
    try:
        dirs = kernel_cgroup_dirs(int(owner.stdout.readline()))
        assert len(dirs) == 2 and all(os.path.isdir(d) for d in dirs), dirs
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(os.path.exists(d) for d in dirs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(os.path.exists(d) for d in dirs), dirs  # the watchdog removed them
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()


@needs_memory_cgroup
def test_a_memory_limit_too_small_to_start_names_the_minimum():
    started = time.monotonic()
    with pytest.raises(kx.KernelStartError) as caught:
        kx.Session(memory_limit=32 * MiB).start()
    message = str(caught.value)
    assert "memory_limit=32 MiB is too small to start a kernel" in message
    assert "needs about 64 MiB" in message and "memory cgroup" in message
    assert time.monotonic() - started < 10  # refused before a kernel is made


def test_a_kernel_dying_in_its_setup_under_a_memory_cgroup_gets_the_cgroup_hint():
    died = kx.KernelStartError("the kernel died while running kernelexec's in-kernel setup: the kernel used more")
    message = _memory_limit_too_small(70 * MiB, died, by_cgroup=True)
    assert message.startswith("the kernel could not start with memory_limit=70 MiB, which is probably too small")
    assert "(a memory cgroup), and a kernel needs about 64 MiB to start" in message
    assert "RLIMIT_AS" not in message


@needs_memory_cgroup
def test_startup_code_over_the_limit_is_a_start_error_naming_the_limit():
    with pytest.raises(kx.KernelStartError) as caught:
        kx.Session(memory_limit=64 * MiB, startup_code="blob = b'x' * (100 * 2**20)").start()
    assert "the kernel died while running startup_code: the kernel used more than its memory_limit of 64 MiB" in str(caught.value)


@needs_memory_cgroup
def test_which_mechanism_limits_memory_is_logged(caplog):
    with caplog.at_level(logging.DEBUG, logger="kernelexec"), kx.Session(memory_limit=512 * MiB) as s:
        s.execute("1")
    assert any("enforced by its memory cgroup" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_without_a_memory_cgroup_the_limit_is_rlimit_as(launcher, monkeypatch, caplog):
    monkeypatch.setenv("KERNELEXEC_CGROUPS", "pids")
    with caplog.at_level(logging.DEBUG, logger="kernelexec"):
        with kx.Session(memory_limit=1024 * MiB, launcher=launcher) as s:
            assert memory_limit_in(s) == ("RLIMIT_AS", 1024 * MiB)
            s.execute("kept = 'state'")
            r = s.execute(BIG_BYTEARRAY)
            assert r.status == "error" and r.error.ename == "MemoryError", r
            assert s.execute("kept").result == "'state'"
    assert any("enforced by RLIMIT_AS" in record.getMessage() for record in caplog.records)


# cgroup v2 and the choice of places, on a directory tree that imitates cgroupfs: this machine
# has its memory and pids controllers on cgroup v1, so v2 cannot be had for real here.


def test_cgroup_v1_and_v2_mounts_are_found_with_our_place_in_each(tmp_path):
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpu memory pids\n")
    mountinfo = (
        "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory,clone_children\n"
        "31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct\n"
        "32 25 0:28 /docker/abc /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
        f"33 25 0:29 / {unified} rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
        "34 25 0:30 / /tmp rw - tmpfs tmpfs rw\n"
    )
    own = "5:memory:/user/42\n3:cpu,cpuacct:/\n2:pids:/docker/abc/k\n0::/app.slice/x.scope\n"
    found = {h.mount: h for h in hierarchies(mountinfo, own)}
    memory = found["/sys/fs/cgroup/memory"]
    assert (memory.own, memory.version, "memory" in memory.controllers) == ("/sys/fs/cgroup/memory/user/42", 1, True)
    assert found["/sys/fs/cgroup/cpu,cpuacct"].controllers == {"cpu", "cpuacct"}
    assert found["/sys/fs/cgroup/pids"].own == "/sys/fs/cgroup/pids/k"  # the mount's root is /docker/abc
    v2 = found[str(unified)]
    assert (v2.version, v2.controllers, v2.own) == (2, {"cpu", "memory", "pids"}, f"{unified}/app.slice/x.scope")
    assert v2.parents() == [v2.own, str(unified)]  # v2: our own (delegated) cgroup first
    assert found["/sys/fs/cgroup/memory"].parents() == ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory/user/42"]


def test_a_v2_kernel_cgroup_has_both_controllers_and_limits(tmp_path):
    root = tmp_path / "cgroup"
    own = root / "app.slice"
    own.mkdir(parents=True)
    (own / "cgroup.subtree_control").write_text("")
    hierarchy = Hierarchy(str(root), frozenset({"memory", "pids"}), str(own), 2)
    cgroup = KernelCgroup.create("kernelexec-k", max_processes=64, memory_limit=512 * MiB, found=[hierarchy])
    assert cgroup is not None
    path = own / "kernelexec-k"
    assert cgroup.paths == [str(path)] and cgroup.pids_path == cgroup.memory_path == str(path)
    assert (path / "pids.max").read_text() == "64"
    assert (path / "memory.max").read_text() == str(512 * MiB)
    assert (own / "cgroup.subtree_control").read_text() in ("+memory", "+pids")  # enabled by us
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroup.oom_kills() == 1
    assert cgroup.memory_limit == 512 * MiB


def test_kernelexec_cgroups_restricts_the_controllers(tmp_path, monkeypatch):
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("memory pids")
    hierarchy = Hierarchy(str(root), frozenset({"memory", "pids"}), str(root), 2)
    monkeypatch.setenv("KERNELEXEC_CGROUPS", "pids")
    cgroup = KernelCgroup.create("kernelexec-k", max_processes=None, memory_limit=512 * MiB, found=[hierarchy])
    assert cgroup is not None and cgroup.memory_path is None and cgroup.memory_limit is None
    monkeypatch.setenv("KERNELEXEC_CGROUPS", "none")
    assert KernelCgroup.create("kernelexec-j", max_processes=None, memory_limit=None, found=[hierarchy]) is None
