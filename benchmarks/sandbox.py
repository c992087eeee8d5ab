"""What the sandbox costs, in one run: cold start (session start to first result) and a trivial
call's latency, sandboxed and not, for each launcher. Starts alternate between the two so that
machine load falls on both alike.

Run: python benchmarks/sandbox.py   (medians; ratios are sandboxed / not)
"""

from __future__ import annotations

import tempfile
import time

from _timing import ms, time_calls

import kernelexec as kx

STARTS, CALLS = 9, 200


def cold_starts(launcher: str, cwd: str) -> tuple[list[float], list[float]]:
    """Start-to-first-result times without and with the sandbox, interleaved. For forks the
    template is warm (another session holds it), as a manager's pool keeps it."""
    samples: tuple[list[float], list[float]] = ([], [])
    holders = [kx.Session(launcher=launcher, cwd=cwd, sandbox=sandbox).start() for sandbox in (None, True)]
    try:
        for _ in range(STARTS):
            for index, sandbox in enumerate((None, True)):
                started = time.perf_counter()
                with kx.Session(launcher=launcher, cwd=cwd, sandbox=sandbox) as s:
                    s.execute("1")
                    samples[index].append(time.perf_counter() - started)
    finally:
        for holder in holders:
            holder.shutdown()
    return samples


def call_latency(launcher: str, cwd: str) -> tuple[list[float], list[float]]:
    with kx.Session(launcher=launcher, cwd=cwd) as plain, kx.Session(launcher=launcher, cwd=cwd, sandbox=True) as boxed:
        plain.execute("1"), boxed.execute("1")
        samples: tuple[list[float], list[float]] = ([], [])
        for _ in range(CALLS // 20):  # alternate in blocks of 20 calls
            samples[0].extend(time_calls(lambda: plain.execute("x = 1"), 20))
            samples[1].extend(time_calls(lambda: boxed.execute("x = 1"), 20))
    return samples


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kx-bench-") as cwd:
        kx.Session(cwd=cwd, sandbox=True)  # the availability probe, once per process
        print(f"{'':28}{'plain':>10}{'sandboxed':>12}{'difference':>12}{'ratio':>8}")
        for launcher in ("fork", "spawn"):
            plain, boxed = cold_starts(launcher, cwd)
            print(f"cold start, {launcher:<16}{ms(plain):8.0f} ms{ms(boxed):9.0f} ms{ms(boxed) - ms(plain):+9.0f} ms{ms(boxed) / ms(plain):8.2f}")
        for launcher in ("fork", "spawn"):
            plain, boxed = call_latency(launcher, cwd)
            print(f"trivial call, {launcher:<14}{ms(plain):8.2f} ms{ms(boxed):9.2f} ms{ms(boxed) - ms(plain):+9.2f} ms{ms(boxed) / ms(plain):8.2f}")


if __name__ == "__main__":
    main()
