"""SessionManager / AsyncSessionManager with real kernels: pool, limits, culling, threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import kernelexec as kx

pytestmark = pytest.mark.timeout(90)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_get_or_create_and_state_per_session():
    with kx.SessionManager(pool_size=1) as m:
        s = m.session("agent-1")
        assert m.session("agent-1") is s
        m.execute("agent-1", "y = 1")
        m.execute("agent-2", "y = 2")
        assert s.execute("y").result == "1"
        assert m.execute("agent-2", "y").result == "2"
        m.close("agent-1")
        m.close("agent-1")  # closing an unknown or closed id is a no-op
        assert [info.id for info in m.list()] == ["agent-2"]
        assert m.execute("agent-1", "'y' in dir()").result == "False"  # a new session


def test_sessions_are_served_from_the_warm_pool_and_it_refills():
    with kx.SessionManager(pool_size=2) as m:
        wait_for(lambda: m.pool_ready == 2)
        pooled_before = m.pool_ready
        m.session("a")
        assert m.pool_ready == pooled_before - 1  # taken, not started
        wait_for(lambda: m.pool_ready == 2)  # refilled in the background


def test_a_restart_after_a_hung_call_takes_a_pooled_kernel():
    with kx.SessionManager(pool_size=1, timeout=1, interrupt_grace=1) as m:
        m.execute("a", "x = 1")
        wait_for(lambda: m.pool_ready == 1)
        r = m.execute("a", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass")
        assert r.status == "timeout" and r.restarted
        assert m.pool_ready == 0  # the replacement came from the pool
        assert m.execute("a", "'x' in dir()").result == "False"
        info = m.list()[0]
        assert (info.executions, info.timeouts, info.restarts, info.deaths) == (3, 1, 1, 0)


def test_stats_count_deaths_and_show_status():
    with kx.SessionManager(pool_size=0) as m:
        m.execute("a", "import os; os._exit(1)")
        (info,) = m.list()
        assert (info.deaths, info.restarts, info.status) == (1, 1, "idle")
        assert info.created <= info.last_used and info.kernel_id


def test_max_sessions_raises_too_many_sessions():
    with kx.SessionManager(pool_size=0, max_sessions=1) as m:
        m.session("a")
        with pytest.raises(kx.TooManySessions, match="max_sessions=1"):
            m.session("b")
        m.close("a")
        m.session("b")


def test_idle_sessions_are_shut_down():
    with kx.SessionManager(pool_size=0, idle_timeout=1) as m:
        s = m.session("a")
        wait_for(lambda: not m.list(), timeout=10)
        assert s.closed


def test_per_session_options_apply_when_created(tmp_path):
    with kx.SessionManager(pool_size=1, timeout=30) as m:
        short = m.session("short", timeout=0.5)
        assert short.execute("import time; time.sleep(5)").status == "timeout"
        elsewhere = m.session("elsewhere", cwd=tmp_path)  # another cwd: a cold start
        assert elsewhere.execute("import os; os.getcwd()").result == repr(str(tmp_path))
        with pytest.raises(kx.InvalidArgument, match="already exists"):
            m.session("short", timeout=1)


def test_manager_is_thread_safe():
    errors: list[BaseException] = []
    with kx.SessionManager(pool_size=2) as m:

        def agent(n: int) -> None:
            try:
                sid = f"agent-{n % 4}"
                m.execute(sid, f"v{n} = {n}")
                assert m.execute(sid, f"v{n}").result == str(n)
            except BaseException as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=agent, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(m.list()) == 4
    assert errors == []


def test_closed_manager_refuses_work():
    m = kx.SessionManager(pool_size=1).start()
    m.session("a")
    m.close()
    m.close()
    with pytest.raises(kx.SessionClosed, match="manager was closed"):
        m.session("a")


def test_bad_manager_arguments():
    with pytest.raises(kx.InvalidArgument):
        kx.SessionManager(max_sessions=0)
    with pytest.raises(kx.InvalidArgument):
        kx.SessionManager(timeout=-1)


def test_async_session_manager():
    async def main():
        async with kx.AsyncSessionManager(pool_size=1, timeout=10) as m:
            await m.execute("a", "z = 3")
            results = await asyncio.gather(
                m.execute("a", "z * 2"), m.execute("b", "z = 4; z"), m.execute("c", "1 + 1")
            )
            return [r.result for r in results], [info.id for info in m.list()]

    results, ids = asyncio.run(main())
    assert results == ["6", "4", "2"] and sorted(ids) == ["a", "b", "c"]


def test_a_session_running_code_can_be_reached_and_interrupted_from_another_thread():
    with kx.SessionManager(pool_size=1) as m:
        m.session("a")
        results: list[kx.ExecutionResult] = []

        def run_stuck_code() -> threading.Thread:
            running = threading.Event()  # the kernel ignores SIGINT until the code runs
            code = "print('running', flush=True)\nwhile True: pass"
            def run() -> None:
                results.append(m.execute("a", code, timeout=30, on_output=lambda _: running.set()))

            runner = threading.Thread(target=run)
            runner.start()
            assert running.wait(timeout=30)
            return runner

        runner = run_stuck_code()
        started = time.monotonic()
        assert m.session("a") is m.get("a")  # neither waits for the call
        m.get("a").interrupt()
        runner.join(timeout=10)
        assert time.monotonic() - started < 2
        assert results[0].status == "interrupted"
        runner = run_stuck_code()
        m.interrupt("a")  # the same, in one call
        runner.join(timeout=10)
        assert results[1].status == "interrupted" and not runner.is_alive()


def test_get_of_an_unknown_session_raises_unknown_session():
    with kx.SessionManager(pool_size=0) as m:
        with pytest.raises(kx.UnknownSession, match=r"no session 'ghost' \(sessions: none\)") as raised:
            m.get("ghost")
        assert isinstance(raised.value, KeyError)
        m.session("a")
        m.close("a")
        with pytest.raises(KeyError):
            m.get("a")
    with pytest.raises(kx.SessionClosed):
        m.get("a")


def test_the_culler_goes_on_after_a_session_fails_to_close(caplog):
    """One session's shutdown is monkeypatched to shut down and then raise."""

    async def main() -> None:
        async with kx.AsyncSessionManager(pool_size=0, idle_timeout=1) as m:
            bad = await m.session("bad")
            real_shutdown = bad.shutdown

            async def failing_shutdown() -> None:
                await real_shutdown()
                raise RuntimeError("shutdown failed")

            # Patched before anything else is awaited: a slow start of "good" (a loaded machine)
            # must not let the culler close "bad" the ordinary way first.
            bad.shutdown = failing_shutdown  # type: ignore[method-assign]
            good = await m.session("good")
            deadline = time.monotonic() + 15
            while m.list():
                assert time.monotonic() < deadline, "the culler stopped"
                await asyncio.sleep(0.05)
            assert good.closed
            await m.session("later")  # and it still culls later sessions
            while m.list():
                assert time.monotonic() < deadline, "the culler stopped"
                await asyncio.sleep(0.05)

    asyncio.run(main())
    assert "could not close idle session 'bad'" in caplog.text


def test_closing_the_manager_goes_on_after_a_session_fails_to_shut_down(caplog):
    """One session's shutdown is monkeypatched to shut down and then raise; the other sessions
    and the pool's kernels must still go (the leak check fails the test otherwise)."""

    async def main() -> None:
        m = await kx.AsyncSessionManager(pool_size=2, idle_timeout=None).start()
        bad = await m.session("bad")
        await m.session("good")
        real_shutdown = bad.shutdown

        async def failing_shutdown() -> None:
            await real_shutdown()
            raise RuntimeError("shutdown failed")

        bad.shutdown = failing_shutdown  # type: ignore[method-assign]
        await m.close()
        assert m.pool_ready == 0

    asyncio.run(main())
    assert "could not shut down session 'bad'" in caplog.text


def test_the_culler_never_closes_a_session_while_its_kernel_restarts():
    # Each kernel start takes over idle_timeout: a restart is long enough for the culler to wake.
    with kx.SessionManager(pool_size=0, idle_timeout=3, startup_code="import time; time.sleep(3.5)") as m:
        s = m.session("a")
        assert s.execute("1").ok
        s.restart()
        assert not s.closed and s.execute("1").ok


def test_a_manager_closed_by_another_thread_refuses_work_with_session_closed():
    m = kx.SessionManager(pool_size=0).start()
    m.session("a")
    errors: list[BaseException] = []

    def agent() -> None:
        for _ in range(50):
            try:
                m.session("a")
                m.list()
            except kx.SessionClosed:
                return
            except BaseException as error:  # surfaced below
                errors.append(error)
                return

    threads = [threading.Thread(target=agent) for _ in range(4)]
    for thread in threads:
        thread.start()
    m.close()
    for thread in threads:
        thread.join()
    assert errors == []
    with pytest.raises(kx.SessionClosed, match="manager was closed"):
        m.list()
