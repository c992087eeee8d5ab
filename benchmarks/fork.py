"""Kernels made by fork() next to spawned ones, in one run: cold starts, parallel starts,
Session.fork() and restore() of a big session, the cost of keep_state_on_restart, and memory.

Run: python benchmarks/fork.py   (medians; ratios are fork / spawn)
"""

from __future__ import annotations

import statistics
import threading
import time

import psutil

import kernelexec as kx

STARTS, PARALLEL, CALLS, KERNELS = 7, 32, 60, 16


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def cold_start(launcher: str) -> list[float]:
    """Session start to first result (for forks: with the template warm, as a manager keeps it)."""
    samples = []
    for _ in range(STARTS):
        started = time.perf_counter()
        with kx.Session(launcher=launcher) as s:
            s.execute("1")
            samples.append(time.perf_counter() - started)
    return samples


def parallel_starts(launcher: str, count: int) -> float:
    sessions = [kx.Session(launcher=launcher) for _ in range(count)]
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda s=s: s.execute("1")) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for s in sessions:
        s.shutdown()
    return elapsed


def copies(session: kx.Session) -> tuple[list[float], list[float]]:
    """fork() + first result in the child, and restore() + first result, of a 200 MB session."""
    session.execute("import numpy as np\ndata = np.ones(25 * 2**20)")  # 200 MB
    forks, restores = [], []
    with session.checkpoint() as cp:
        for _ in range(STARTS):
            started = time.perf_counter()
            child = session.fork()
            child.execute("data.size")
            forks.append(time.perf_counter() - started)
            child.shutdown()
            started = time.perf_counter()
            session.restore(cp)
            session.execute("data.size")
            restores.append(time.perf_counter() - started)
    return forks, restores


def per_call(keep_state: bool, big: bool, think: float) -> float:
    """A trivial call's time; ``think``: the pause between calls (an agent's model answering)."""
    with kx.Session(launcher="fork", keep_state_on_restart=keep_state) as s:
        if big:
            s.execute("import numpy as np\ndata = np.ones(62 * 2**20)")  # 500 MB
        samples = []
        for i in range(CALLS // 2 if think else CALLS):
            time.sleep(think)
            started = time.perf_counter()
            s.execute(f"x = {i}")
            samples.append(time.perf_counter() - started)
        return median_ms(samples)


def pss_per_kernel(launcher: str, count: int, code: str) -> float:
    """Mean PSS of ``count`` kernels that ran ``code`` (the template's share is divided among
    the kernels and itself, as PSS divides every shared page)."""
    sessions = [kx.Session(launcher=launcher).start() for _ in range(count)]
    try:
        for s in sessions:
            s.execute(code)
        total = 0
        for s in sessions:
            pid = s.async_session._state.kernel.pid
            total += psutil.Process(pid).memory_full_info().pss
        return total / count / 2**20
    finally:
        for s in sessions:
            s.shutdown()


def main() -> None:
    print(f"cold start + first result, median of {STARTS}")
    spawn = cold_start("spawn")
    with kx.Session(launcher="fork") as holder:  # the template stays warm meanwhile
        fork = cold_start("fork")
        print(f"  spawn {median_ms(spawn):7.1f} ms   fork {median_ms(fork):7.1f} ms   ratio {median_ms(fork) / median_ms(spawn):.2f}x")
        print(f"{PARALLEL} parallel starts + first result")
        spawn_par, fork_par = parallel_starts("spawn", PARALLEL), parallel_starts("fork", PARALLEL)
        print(f"  spawn {spawn_par * 1000:7.0f} ms   fork {fork_par * 1000:7.0f} ms   ratio {fork_par / spawn_par:.2f}x")
        forks, restores = copies(holder)
    cold = median_ms(spawn)
    print(f"200 MB session, median of {STARTS}")
    print(f"  fork() + first result    {median_ms(forks):7.1f} ms   ratio to a spawned cold start {median_ms(forks) / cold:.2f}x")
    print(f"  restore() + first result {median_ms(restores):7.1f} ms   ratio to a spawned cold start {median_ms(restores) / cold:.2f}x")
    print("per call ('x = i'): back to back, and 0.2 s apart (the copy is made between calls)")
    for big in (False, True):
        for think in (0.0, 0.2):
            plain, kept = per_call(False, big, think), per_call(True, big, think)
            label = ("500 MB session" if big else "small session ") + (", 0.2 s apart" if think else ", back to back")
            print(f"  {label}: plain {plain:6.2f} ms   keep_state_on_restart {kept:6.2f} ms   (+{kept - plain:.2f} ms)")
    for label, code in (("idle", "1"), ("numpy imported", "import numpy")):
        print(f"PSS per kernel, {KERNELS} kernels, {label}")
        spawn_pss, fork_pss = pss_per_kernel("spawn", KERNELS, code), pss_per_kernel("fork", KERNELS, code)
        print(f"  spawn {spawn_pss:6.1f} MB   fork {fork_pss:6.1f} MB   kernels per GB: "
              f"{1024 / spawn_pss:.0f} vs {1024 / fork_pss:.0f} ({spawn_pss / fork_pss:.2f}x)")


if __name__ == "__main__":
    main()
