"""Kernels made by fork(): the template launcher, Session.fork(), checkpoints, keep_state_on_restart.

Real kernels throughout: the template and checkpoints are real processes (see _fork_server and
_fork_side), and every test is checked for leaks like the rest of the suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import psutil
import pytest
from conftest import REPO_ROOT
from memory_limits import memory_limit_in

import kernelexec as kx
from kernelexec._forked_kernel import ForkedKernel
from kernelexec._kernel import LocalKernel

pytestmark = pytest.mark.timeout(120)

SIGINT_PROOF_LOOP = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n"


def kernel_of(session: kx.Session) -> object:
    return session.async_session._state.kernel


# The launcher


def test_launcher_auto_forks_from_a_template_and_spawn_spawns():
    with kx.Session(timeout=30, launcher="auto") as forked, kx.Session(timeout=30, launcher="spawn") as spawned:
        assert isinstance(kernel_of(forked), ForkedKernel)
        assert isinstance(kernel_of(spawned), LocalKernel)
        for s in (forked, spawned):
            assert s.execute("import sys; sys.version_info[0]").result == "3"


def test_launcher_fork_says_why_it_cannot(tmp_path, monkeypatch):
    spec = tmp_path / "kernels" / "shell"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text('{"argv": ["/bin/sh", "-c", "sleep 60", "{connection_file}"], '
                                      '"display_name": "sh", "language": "sh"}')  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    with pytest.raises(kx.KernelStartError, match="does not run ipykernel"):
        kx.Session("shell", launcher="fork", startup_timeout=5).start()
    with pytest.raises(kx.InvalidArgument, match="launcher"):
        kx.Session(launcher="clone")


def test_a_forked_kernel_gets_the_environment_cwd_and_limits_of_its_session(tmp_path, monkeypatch):
    with kx.Session(timeout=30, launcher="fork") as first:  # the template starts now, with the environment of now
        monkeypatch.setenv("KX_LATER_API_KEY", "secret-set-after-the-template-started")
        monkeypatch.setenv("KX_LATER_VISIBLE", "yes")
        with kx.Session(timeout=30, cwd=tmp_path, env={"KX_GIVEN": "1"}, memory_limit=2 * 1024**3, launcher="fork") as s:
            assert isinstance(kernel_of(s), ForkedKernel)
            r = s.execute(
                "import os\n"
                "print((os.environ.get('KX_LATER_API_KEY'), os.environ.get('KX_LATER_VISIBLE'),"
                " os.environ.get('KX_GIVEN'), os.getcwd()))"
            )
            assert r.stdout.strip() == repr((None, "yes", "1", str(tmp_path)))
            assert memory_limit_in(s) in (("cgroup", 2 * 1024**3), ("RLIMIT_AS", 2 * 1024**3))
        assert first.execute("1").ok


# Session.fork()


def test_a_fork_has_the_state_and_is_independent():
    with kx.Session(timeout=30, launcher="fork") as s:
        s.execute("import os, collections\nmodel = {'w': 1}\ndef f(x):\n    return x + 1\nos.chdir('/tmp')")
        count = s.execution_count
        child = s.fork()
        try:
            assert child.execution_count == count
            r = child.execute("model['w'] = 2\n(model, f(1), collections.__name__, os.getcwd())")
            assert r.result == "({'w': 2}, 2, 'collections', '/tmp')"
            assert r.execution_count == count + 1
            assert s.execute("model").result == "{'w': 1}"
            # The child is a full kernel: its own timeout ladder, death detection and restart.
            stuck = child.execute(SIGINT_PROOF_LOOP, timeout=1)
            assert stuck.status == "timeout" and stuck.restarted
            died = child.execute("import os; os._exit(7)")
            assert died.status == "died" and "exited with code 7" in died.error.evalue
            assert child.execute("1 + 1").result == "2"
        finally:
            child.shutdown()
        assert s.execute("model['w']").result == "1"


def test_a_fork_while_a_user_thread_runs_warns_and_the_child_works():
    with kx.Session(timeout=30, launcher="fork") as s:
        s.execute("import threading, time\nthreading.Thread(target=time.sleep, args=(60,), name='worker', daemon=True).start()")
        with pytest.warns(kx.ForkWarning, match="'worker'"):
            child = s.fork()
        try:
            assert child.execute("import threading; [t.name for t in threading.enumerate()].count('worker')").result == "0"
        finally:
            child.shutdown()


def test_sixteen_forks_of_one_session_at_once():
    with kx.Session(timeout=60, launcher="fork") as s:
        s.execute("base = 40")
        children: list[kx.Session] = []
        errors: list[BaseException] = []

        def fork_one(i: int) -> None:
            try:
                child = s.fork(timeout=60)
                children.append(child)
                assert child.execute(f"base + {i}").result == str(40 + i)
            except BaseException as error:  # reported below, in the test's thread
                errors.append(error)

        threads = [threading.Thread(target=fork_one, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for child in children:
            child.shutdown()
        assert not errors and len(children) == 16


def test_twenty_fork_and_close_cycles_leave_the_source_as_it_was():
    with kx.Session(timeout=30, launcher="fork") as s:
        fds = lambda: int(s.execute("import os; len(os.listdir('/proc/self/fd'))").result)  # noqa: E731
        threads = lambda: int(s.execute("import threading; threading.active_count()").result)  # noqa: E731
        s.fork().shutdown()  # the first fork compiles the fork code in the kernel
        before = (fds(), threads())
        for _ in range(20):
            s.fork().shutdown()
        assert (fds(), threads()) == before


def test_a_manager_forks_a_session_under_a_new_id():
    with kx.SessionManager(pool_size=0, timeout=30) as m:
        m.execute("a", "notes = ['a']")
        b = m.fork("a", "b")
        assert b.execute("notes.append('b'); notes").result == "['a', 'b']"
        assert m.execute("a", "notes").result == "['a']"
        assert sorted(info.id for info in m.list()) == ["a", "b"]
        with pytest.raises(kx.InvalidArgument, match="already exists"):
            m.fork("a", "b")
        with pytest.raises(kx.UnknownSession):
            m.fork("nope", "c")


def test_a_spawned_session_can_be_forked_too():
    with kx.Session(timeout=30, launcher="spawn") as s:
        s.execute("y = 5")
        child = s.fork()
        try:
            assert isinstance(kernel_of(child), ForkedKernel)
            assert child.execute("y * 2").result == "10"
        finally:
            child.shutdown()


def test_forked_kernels_install_kernelexecs_hooks_themselves_with_their_sessions_options(monkeypatch):
    from kernelexec import _launch

    sent = []
    bootstrap = _launch.bootstrap_code
    monkeypatch.setattr(_launch, "bootstrap_code", lambda *a: sent.append(a) or bootstrap(*a))
    flood = "print('x' * 20000)"
    with kx.Session(timeout=30, launcher="fork", max_output_bytes=2000) as s:
        s.execute("y = 5")
        child = s.fork()
        try:
            r = child.execute(flood)  # the hooks are there: the bound, the error payloads
            assert r.truncated_bytes > 0 and len(r.stdout) < 4000
            failed = child.execute("def g(a):\n    return 1 / a\ng(0)")
            assert failed.status == "error" and failed.error.ename == "ZeroDivisionError"
            assert [frame.name for frame in failed.error.frames][-1] == "g"
            with s.checkpoint() as cp, kx.Session(timeout=30, launcher="fork", max_output_bytes=50_000) as other:
                other.restore(cp)  # a copy for other options installs the hooks for those
                assert other.execute("y").result == "5"
                whole = other.execute(flood)
                assert whole.truncated_bytes == 0 and len(whole.stdout) == 20001
        finally:
            child.shutdown()
    assert not sent  # no kernel was sent the setup: each installed it as it started
    with kx.Session(timeout=30, launcher="spawn") as spawned:
        assert spawned.execute("1").result == "1" and len(sent) == 1


def test_a_forked_start_given_up_at_any_moment_leaves_no_kernel():
    # Cancelled while the fork request is in flight, nobody knows the child's pid but the reply:
    # the child must still go (and with it, every file it would write).
    import asyncio
    import uuid

    from kernelexec._launch import Launcher
    from kernelexec._options import SessionOptions

    marker = uuid.uuid4().hex

    def survivors() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("KX_CANCEL_MARKER") == marker:
                    found.append(process)
        return found

    async def main() -> None:
        launcher = Launcher(SessionOptions(launcher="fork", env={"KX_CANCEL_MARKER": marker}))
        try:
            kernel = await launcher.start()  # the template is warm from here on
            await kernel.shutdown()
            for delay in (0, 0.001, 0.003, 0.006, 0.01, 0.02, 0.05):
                with contextlib.suppress(asyncio.TimeoutError):
                    kernel = await asyncio.wait_for(launcher.start(), delay)
                    await kernel.shutdown()
            await asyncio.sleep(0.5)  # late replies arrive
        finally:
            await launcher.close()

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not survivors()


def test_a_kernel_that_lost_the_fork_code_is_sent_it_again():
    with kx.Session(timeout=30, launcher="fork") as s:
        s.execute("y = 5\ndel get_ipython()._kernelexec_fork")
        child = s.fork()
        try:
            assert child.execute("y").result == "5"
        finally:
            child.shutdown()


# Checkpoints


def test_a_checkpoint_restores_any_number_of_times_and_into_a_fork():
    with kx.Session(timeout=30, launcher="fork") as s:
        s.execute("data = list(range(1000))")
        with s.checkpoint() as cp:
            assert s.checkpoints and s.checkpoints[0].pid == cp.pid
            s.execute("del data")
            for _ in range(2):
                s.restore(cp)
                assert s.execute("len(data)").result == "1000"
                s.execute("data.append(1)")
            child = s.fork()
            try:
                child.restore(cp)
                assert child.execute("len(data)").result == "1000"
            finally:
                child.shutdown()
        assert cp.closed and not s.checkpoints


def test_a_checkpoint_uses_no_cpu_and_its_copy_shares_memory_until_it_writes():
    with kx.Session(timeout=60, launcher="fork") as s:
        s.execute("blob = bytes(300 * 2**20)")
        with s.checkpoint() as cp:
            held = psutil.Process(cp.pid)
            cpu = sum(held.cpu_times()[:2])
            time.sleep(1)
            assert sum(held.cpu_times()[:2]) - cpu < 0.05
            child = s.fork()
            try:
                child_process = psutil.Process(kernel_of(child).pid)
                assert child_process.memory_full_info().uss < 150 * 2**20  # the 300 MB are shared
                child.execute("blob = bytearray(blob)")  # writing copies it
                assert child_process.memory_full_info().uss > 250 * 2**20
            finally:
                child.shutdown()


def test_checkpoints_are_bounded_and_all_go_at_shutdown():
    with kx.Session(timeout=30, max_checkpoints=2, launcher="fork") as s:
        first = s.checkpoint()
        s.checkpoint()
        with pytest.warns(ResourceWarning, match="oldest checkpoint"):
            s.checkpoint()
        assert first.closed and len(s.checkpoints) == 2
        pids = [cp.pid for cp in s.checkpoints]
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# keep_state_on_restart


@pytest.mark.parametrize(
    "failing, status",
    [(SIGINT_PROOF_LOOP, "timeout"), ("import os\nos._exit(1)", "died")],
    ids=["sigint-ignoring loop", "os._exit"],
)
def test_keep_state_on_restart_resumes_from_before_the_failed_call(failing, status):
    with kx.Session(timeout=1, interrupt_grace=1, keep_state_on_restart=True, launcher="fork") as s:
        s.execute("x = 1")
        r = s.execute("x = 2\n" + failing)
        assert r.status == status and r.restarted and r.state_restored
        assert "as it was before this call" in str(r)
        assert s.execute("x").result == "1"
        assert s.execute("x = 3").ok and s.execute("x").result == "3"


def test_keep_state_on_restart_keeps_the_latest_state_of_calls_made_back_to_back():
    # Each call starts while the copy of the state before it is still being made (its kernel
    # part is over): a copy that ends after the next call changed the state must be dropped.
    with kx.Session(timeout=30, keep_state_on_restart=True, launcher="fork") as s:
        for i in range(12):
            s.execute(f"x = {i}")
        r = s.execute("import os\nos._exit(1)")
        assert r.status == "died" and r.state_restored
        assert s.execute("x").result == "11"
    # (a copy kept past its time would be a process and a socket file left: the leak check)


def test_restart_during_a_call_gives_a_fresh_kernel_even_with_keep_state_on_restart():
    with kx.Session(timeout=30, keep_state_on_restart=True, launcher="fork") as s:
        s.execute("x = 1")
        results: list[kx.ExecutionResult] = []
        call = threading.Thread(target=lambda: results.append(s.execute("import time; time.sleep(20)")))
        call.start()
        deadline = time.monotonic() + 20
        while s.stats.status != "busy" and time.monotonic() < deadline:
            time.sleep(0.01)
        s.restart()
        call.join()
        assert results[0].status == "died" and not results[0].state_restored
        assert s.execute("'x' in globals()").result == "False"


def test_a_fork_warning_raised_as_an_error_leaves_no_copy_behind():
    with kx.Session(timeout=30, launcher="fork") as s:
        s.execute("import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()")
        with warnings.catch_warnings():
            warnings.simplefilter("error", kx.ForkWarning)
            with pytest.raises(kx.ForkWarning):
                s.checkpoint()
        assert s.checkpoints == []  # and the leak check finds no process, fd or file of the copy


# Containment


OWNER = """
import sys, time
import kernelexec as kx
s = kx.Session(timeout=30, launcher="fork")
s.start()
s.execute("x = 1")
child = s.fork()
cp = s.checkpoint()
print(s.async_session._state.kernel.pid, child.async_session._state.kernel.pid, cp.pid, flush=True)
time.sleep(60)
"""


def test_forked_kernels_and_checkpoints_die_with_a_sigkilled_owner(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
    )  # fmt: skip
    try:
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 3 and all(psutil.pid_exists(pid) for pid in pids)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        owner.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
