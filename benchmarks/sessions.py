"""Many sessions: warm-pool acquisition, concurrent starts, throughput and recovery, next to raw
jupyter_client driven the same way, in one run.

Run: python benchmarks/sessions.py
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time

from jupyter_client.manager import AsyncKernelManager, KernelManager

import kernelexec as kx
from _timing import ms

SESSIONS, CALLS = 8, 200
HUNG = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n"


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def acquisition() -> None:
    cold = []
    for _ in range(5):
        started = time.perf_counter()
        session = kx.Session().start()
        cold.append(time.perf_counter() - started)
        session.shutdown()
    pooled = []
    with kx.SessionManager(pool_size=2, max_sessions=100) as m:
        for i in range(10):
            wait_for(lambda: m.pool_ready == 2)
            started = time.perf_counter()
            m.session(f"s{i}")
            pooled.append(time.perf_counter() - started)
            m.close(f"s{i}")
    cold_ms, pooled_ms = ms(cold), ms(pooled)
    print(f"session acquisition, median: warm pool {pooled_ms:.1f} ms vs cold start {cold_ms:.0f} ms "
          f"({cold_ms / pooled_ms:.0f}x faster; target < 20 ms from the pool)")


def concurrent_starts(count: int = 32) -> None:
    async def main() -> float:
        sessions = [kx.AsyncSession(startup_timeout=300) for _ in range(count)]
        started = time.perf_counter()
        try:
            await asyncio.gather(*(s.start() for s in sessions))
            return time.perf_counter() - started
        finally:
            await asyncio.gather(*(s.shutdown() for s in sessions))

    print(f"{count} sessions started concurrently: all ready in {asyncio.run(main()):.1f} s, no failures")


def raw_clients(count: int) -> tuple[list[KernelManager], list]:
    managers, clients = [], []
    for _ in range(count):
        manager = KernelManager(kernel_name="python3")
        manager.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        managers.append(manager)
        clients.append(client)
    return managers, clients


def run_threads(work) -> float:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(SESSIONS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return SESSIONS * CALLS / (time.perf_counter() - started)


def throughput_threads() -> tuple[float, float]:
    managers, clients = raw_clients(SESSIONS)

    def raw(i: int) -> None:
        for _ in range(CALLS):
            clients[i].execute_interactive("x = 1", output_hook=lambda msg: None, timeout=30)

    raw_rate = run_threads(raw)
    for client, manager in zip(clients, managers):
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    with kx.SessionManager(pool_size=0, max_sessions=SESSIONS) as m:
        sessions = [m.session(f"s{i}") for i in range(SESSIONS)]

        def ours(i: int) -> None:
            for _ in range(CALLS):
                sessions[i].execute("x = 1")

        kx_rate = run_threads(ours)
    return raw_rate, kx_rate


def throughput_asyncio() -> tuple[float, float]:
    async def raw() -> float:
        managers = [AsyncKernelManager(kernel_name="python3") for _ in range(SESSIONS)]
        await asyncio.gather(*(m.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for m in managers))
        clients = [m.client() for m in managers]
        for client in clients:
            client.start_channels()
        await asyncio.gather(*(c.wait_for_ready(timeout=60) for c in clients))

        async def drive(client) -> None:
            for _ in range(CALLS):
                await client.execute_interactive("x = 1", output_hook=lambda msg: None, timeout=30)

        started = time.perf_counter()
        await asyncio.gather(*(drive(c) for c in clients))
        rate = SESSIONS * CALLS / (time.perf_counter() - started)
        for client in clients:
            client.stop_channels()
        await asyncio.gather(*(m.shutdown_kernel(now=True) for m in managers))
        return rate

    async def ours() -> float:
        async with kx.AsyncSessionManager(pool_size=0, max_sessions=SESSIONS) as m:
            sessions = await asyncio.gather(*(m.session(f"s{i}") for i in range(SESSIONS)))

            async def drive(session) -> None:
                for _ in range(CALLS):
                    await session.execute("x = 1")

            started = time.perf_counter()
            await asyncio.gather(*(drive(s) for s in sessions))
            return SESSIONS * CALLS / (time.perf_counter() - started)

    return asyncio.run(raw()), asyncio.run(ours())


def recovery() -> None:
    with kx.SessionManager(pool_size=1, timeout=1, interrupt_grace=1) as m:
        m.execute("a", "1")
        escalation, death = [], []
        for _ in range(5):
            wait_for(lambda: m.pool_ready == 1)
            started = time.perf_counter()
            result = m.execute("a", HUNG)
            assert result.restarted and m.execute("a", "1").ok
            escalation.append(time.perf_counter() - started - 2.0)  # beyond timeout + grace
            wait_for(lambda: m.pool_ready == 1)
            started = time.perf_counter()
            result = m.execute("a", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
            assert result.status == "died" and m.execute("a", "1").ok
            death.append(time.perf_counter() - started)
    print(f"recovery with a pooled kernel ready, median of 5: timeout escalation answered again "
          f"{ms(escalation):.0f} ms beyond timeout+grace; kernel death answered "
          f"again {ms(death):.0f} ms after the call began (target < 100 ms)")


def main() -> None:
    recovery()
    acquisition()
    concurrent_starts()
    raw_rate, kx_rate = throughput_threads()
    print(f"throughput, {SESSIONS} sessions x {CALLS} trivial calls from {SESSIONS} threads: raw "
          f"{raw_rate:.0f} calls/s, kernelexec {kx_rate:.0f} calls/s, ratio {kx_rate / raw_rate:.2f}x "
          "(target >= 0.9x)")
    raw_rate, kx_rate = throughput_asyncio()
    print(f"throughput, {SESSIONS} sessions x {CALLS} trivial calls from asyncio: raw "
          f"{raw_rate:.0f} calls/s, kernelexec {kx_rate:.0f} calls/s, ratio {kx_rate / raw_rate:.2f}x "
          "(target >= 0.9x)")


if __name__ == "__main__":
    main()
