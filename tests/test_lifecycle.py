"""Kernels never outlive their owner: close, restart, owner exit and owner SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from conftest import REPO_ROOT

import kernelexec as kx

pytestmark = pytest.mark.timeout(120)

OWNER = textwrap.dedent(
    """
    import sys, time
    import kernelexec as kx
    s = kx.Session().start()
    r = s.execute("import os, subprocess\\nchild = subprocess.Popen(['sleep', '600'])\\n"
                  "print(os.getpid(), child.pid)")
    print(r.stdout.strip(), flush=True)
    if sys.argv[1] == "busy":
        s.execute("sum(range(10**13))  # a long C call: the kernel's own threads cannot run")
    elif sys.argv[1] == "exit":
        sys.exit(0)
    time.sleep(600)
    """
)


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_owner(tmp_path, mode: str) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen(
        [sys.executable, str(script), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
    )  # fmt: skip
    line = owner.stdout.readline()
    assert line, owner.stderr.read()
    return owner, [int(pid) for pid in line.split()]


@pytest.mark.parametrize("mode", ["sleep", "busy"])
def test_kernels_and_their_children_die_with_a_sigkilled_owner(tmp_path, mode):
    owner, pids = start_owner(tmp_path, mode)
    try:
        time.sleep(0.3)  # let "busy" enter its C call
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert gone_within(pids, 5), f"kernel or its child outlived the owner ({mode})"
    finally:
        owner.stdout.close(), owner.stderr.close()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_owner_exiting_without_closing_exits_cleanly_and_leaves_nothing(tmp_path):
    owner, pids = start_owner(tmp_path, "exit")
    try:
        assert owner.wait(timeout=30) == 0
        assert owner.stderr.read() == ""  # no traceback, no warning noise
        assert gone_within(pids, 5)
    finally:
        owner.stdout.close(), owner.stderr.close()


def test_restart_and_shutdown_end_processes_the_code_started():
    spawn = "import subprocess\nsubprocess.Popen(['sleep', '600']).pid"
    with kx.Session() as s:
        before_restart = int(s.execute(spawn).result)
        s.restart()
        assert gone_within([before_restart], 5)
        before_shutdown = int(s.execute(spawn).result)
    assert gone_within([before_shutdown], 5)


def test_twenty_create_close_cycles_leave_threads_and_fds_as_they_were():
    def counts() -> tuple[int, int]:
        return threading.active_count(), len(os.listdir("/proc/self/fd"))

    with kx.Session():
        pass  # first use imports and caches what every later session shares
    before = counts()
    for _ in range(20):  # as issue 3 asks
        with kx.Session() as s:
            s.execute("1")
    assert counts() == before
    with kx.SessionManager(pool_size=2) as m:
        for i in range(20):
            m.execute(f"s{i}", "1")
            m.close(f"s{i}")
    assert counts() == before


@pytest.mark.timeout(300)
def test_thirty_two_kernels_start_concurrently():
    async def main() -> list[str]:
        sessions = [kx.AsyncSession(startup_timeout=240) for _ in range(32)]
        try:
            await asyncio.gather(*(s.start() for s in sessions))
            results = await asyncio.gather(*(s.execute("import os; os.getpid()") for s in sessions))
            return [r.result for r in results]
        finally:
            await asyncio.gather(*(s.shutdown() for s in sessions))

    pids = asyncio.run(main())
    assert len(set(pids)) == 32


def test_shutdown_from_another_thread_ends_a_running_call_at_once():
    with kx.Session(timeout=120) as s:
        results: list[kx.ExecutionResult] = []
        worker = threading.Thread(target=lambda: results.append(s.execute("import time\ntime.sleep(100)")))
        worker.start()
        time.sleep(1)
        started = time.monotonic()
        s.shutdown()
        worker.join(10)
        assert time.monotonic() - started < 10
    assert results and results[0].status == "died"
    assert "the session was shut down" in results[0].error.evalue


def test_restart_raises_when_no_new_kernel_can_start(tmp_path, monkeypatch):
    """A kernel spec that starts once, then fails (its flag file says so)."""
    flag = tmp_path / "broken"
    launcher = (
        "import os, sys\n"
        f"if os.path.exists({str(flag)!r}):\n    sys.exit('this kernel is broken now')\n"
        "from ipykernel import kernelapp\nkernelapp.launch_new_instance()\n"
    )
    folder = tmp_path / "kernels" / "fragile"
    folder.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-c", launcher, "-f", "{connection_file}"],
            "display_name": "fragile", "language": "python"}  # fmt: skip
    (folder / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    with kx.Session("fragile") as s:
        assert s.execute("1 + 1").result == "2"
        flag.touch()
        with pytest.raises(kx.KernelStartError, match="broken now"):
            s.restart()
        assert s.stats.restarts == 0
        flag.unlink()
        assert s.execute("2 + 2").result == "4"  # the next call starts a kernel again


def test_restart_from_another_thread_ends_a_call_that_ignores_interrupts():
    with kx.Session(timeout=120) as s:
        results: list[kx.ExecutionResult] = []
        code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(100)"
        worker = threading.Thread(target=lambda: results.append(s.execute(code)))
        worker.start()
        time.sleep(1)
        started = time.monotonic()
        s.restart()
        assert time.monotonic() - started < 15
        worker.join(10)
        assert results and results[0].status == "died"
        assert s.execute("1 + 1").result == "2"
        assert s.stats.restarts == 1
