"""memory_limit by a memory cgroup, in one run: what it costs a start, how fast a kernel over its
limit is stopped and reported (against a kernel killed by SIGKILL), and the smallest limit a
kernel starts with, per launcher.

Run: python benchmarks/memory.py   (medians; ratios are with memory_limit / without; as root,
or where cgroups are delegated to the user)
"""

from __future__ import annotations

import os
import time

from _timing import ms, time_calls

import kernelexec as kx
import kernelexec._process_kernel as process_kernel
from kernelexec._cgroups import KernelCgroup

MiB = 2**20
STARTS, DEATHS = 7, 7
LIMIT = 512 * MiB


def starts(launcher: str, memory_limit: int | None) -> list[float]:
    samples = []
    for _ in range(STARTS):
        started = time.perf_counter()
        with kx.Session(launcher=launcher, memory_limit=memory_limit) as s:
            s.execute("1")
            samples.append(time.perf_counter() - started)
    return samples


def cgroup_cost(memory_limit: int | None) -> list[float]:
    """Making and removing a kernel's cgroups alone (no kernel)."""
    names = iter(range(10**6))

    def make_and_remove() -> None:
        cgroup = KernelCgroup.create(f"kernelexec-bench-{os.getpid()}-{next(names)}", max_processes=None,
                                     memory_limit=memory_limit)  # fmt: skip
        assert cgroup is not None
        cgroup.kill_and_remove()

    return time_calls(make_and_remove, 100)


def deaths(launcher: str, code: str) -> tuple[list[float], list[float]]:
    """Time until the death is reported (exec_time), and the whole call (with the restart)."""
    seen, calls = [], []
    with kx.Session(launcher=launcher, memory_limit=LIMIT, timeout=60) as s:
        for _ in range(DEATHS):
            started = time.perf_counter()
            r = s.execute(code)
            calls.append(time.perf_counter() - started)
            assert r.status == "died", r
            seen.append(r.exec_time)
    return seen, calls


def starts_with(launcher: str, limit_mib: int) -> bool:
    try:
        with kx.Session(launcher=launcher, memory_limit=limit_mib * MiB, startup_timeout=30) as s:
            return s.execute("1").ok
    except kx.KernelStartError:
        return False


def smallest_limit(launcher: str, low: int = 8, high: int = 128) -> int:
    """The smallest limit (MiB, to 2 MiB) a kernel starts with, ignoring the refusal below the
    documented minimum (that is what this measures)."""
    minimum, process_kernel.MEMORY_CGROUP_MINIMUM = process_kernel.MEMORY_CGROUP_MINIMUM, 0
    try:
        while high - low > 2:
            middle = (low + high) // 2
            low, high = (low, middle) if starts_with(launcher, middle) else (middle, high)
        return high
    finally:
        process_kernel.MEMORY_CGROUP_MINIMUM = minimum


def main() -> None:
    pids_only, both = cgroup_cost(None), cgroup_cost(LIMIT)
    print(f"cgroups made and removed: {ms(pids_only):.2f} ms (pids), {ms(both):.2f} ms (pids + memory)")
    for launcher in ("fork", "spawn"):
        without, with_limit = starts(launcher, None), starts(launcher, LIMIT)
        print(f"{launcher}: start {ms(without):.0f} ms without memory_limit, {ms(with_limit):.0f} ms with "
              f"(ratio {ms(with_limit) / ms(without):.2f})")
        for name, code in (
            ("bytearray(2 GiB)", "blob = bytearray(2 * 1024**3)"),
            ("10 MiB chunks", "chunks = []\nwhile True:\n    chunks.append(b'x' * (10 * 2**20))"),
            ("os.kill(SIGKILL)", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
        ):
            seen, calls = deaths(launcher, code)
            print(f"{launcher}: {name} under {LIMIT // MiB} MiB: died, seen after {ms(seen):.0f} ms "
                  f"(max {max(seen) * 1000:.0f}), call with restart {ms(calls):.0f} ms")
        with kx.Session(launcher=launcher) as s:  # the baseline: touching as much, with no limit
            touch = time_calls(lambda: s.execute(f"blob = bytearray({LIMIT}); del blob"), DEATHS)
        print(f"{launcher}: bytearray({LIMIT // MiB} MiB) without a limit: {ms(touch):.0f} ms")
        print(f"{launcher}: smallest memory_limit that starts a kernel: {smallest_limit(launcher)} MiB")


if __name__ == "__main__":
    main()
