"""Round-trip latency of kernelexec against raw jupyter_client, and timeout control return.

Run: python benchmarks/latency.py [--calls 300]

Both clients drive their own warm kernel with the same trivial statement, in alternating rounds so
that machine drift hits both alike; the script prints both medians and their ratio. It then times
how long control takes to come back from a hung call under the timeout ladder.
"""

from __future__ import annotations

import argparse
import subprocess
import time

from jupyter_client.manager import KernelManager

import kernelexec as kx
from _timing import ms, time_calls

STATEMENT = "x = x + 1"
SIGINT_PROOF_LOOP = (
    "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n"
)



def latency(calls: int, rounds: int) -> None:
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    client.execute_interactive("x = 0", output_hook=lambda msg: None)

    def raw() -> None:
        reply = client.execute_interactive(STATEMENT, output_hook=lambda msg: None, timeout=10)
        assert reply["content"]["status"] == "ok"

    raw_samples: list[float] = []
    kx_samples: list[float] = []
    with kx.Session() as session:
        session.execute("x = 0")

        def ours() -> None:
            assert session.execute(STATEMENT).ok

        time_calls(raw, 20), time_calls(ours, 20)  # warm-up
        per_round = max(1, calls // rounds)
        for _ in range(rounds):
            raw_samples += time_calls(raw, per_round)
            kx_samples += time_calls(ours, per_round)
    client.stop_channels()
    manager.shutdown_kernel(now=True)

    raw_ms = ms(raw_samples)
    kx_ms = ms(kx_samples)
    print(f"trivial statement {STATEMENT!r}, {len(kx_samples)} calls each, median:")
    print(f"  raw jupyter_client execute_interactive  {raw_ms:7.2f} ms")
    print(f"  kernelexec Session.execute              {kx_ms:7.2f} ms")
    print(f"  ratio kernelexec / raw                  {kx_ms / raw_ms:7.3f}x   (target <= 1.10x)")


def timeout_return() -> None:
    with kx.Session(timeout=1) as session:
        session.execute("kept = 1")
        started = time.perf_counter()
        result = session.execute("import time; time.sleep(60)")
        elapsed = time.perf_counter() - started
        kept = session.execute("kept").result == "1"
    print(f"time.sleep(60) under timeout=1: control back in {elapsed:.3f} s "
          f"(status {result.status}, state kept: {kept}; target < 1.3 s)")

    with kx.Session(timeout=1, interrupt_grace=1) as session:
        started = time.perf_counter()
        result = session.execute(SIGINT_PROOF_LOOP)
        elapsed = time.perf_counter() - started
        usable = session.execute("1 + 1").result == "2"
        total = time.perf_counter() - started
    print(f"SIGINT-ignoring loop under timeout=1, interrupt_grace=1: control back in {elapsed:.3f} s "
          f"(status {result.status}, restarted {result.restarted}); answering again after {total:.3f} s "
          f"(usable: {usable}; target < 3.5 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    latency(args.calls, args.rounds)
    timeout_return()


if __name__ == "__main__":
    main()
