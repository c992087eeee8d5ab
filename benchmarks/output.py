"""Output through kernelexec next to raw jupyter_client, in one run.

Run: python benchmarks/output.py [--megabytes 1000] [--prints 200000]

- A huge print: kernelexec keeps head + tail, so the client stays small. Prints the client's peak
  RSS (the kernel is a separate process) before and after, next to raw jupyter_client, which
  holds the whole text.
- Many small prints: the time of a call making ``--prints`` print calls, which shows the cost of
  kernelexec's kernel-side write path (keeping fd output in order, pacing) over stock ipykernel.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap


CHILD = textwrap.dedent(
    """
    import resource, sys, time
    code = sys.argv[2]
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if sys.argv[1] == "kernelexec":
        import kernelexec as kx
        with kx.Session(timeout=600, env={"PYTEST_CURRENT_TEST": None}) as s:
            base = peak()
            started = time.perf_counter()
            r = s.execute(code)
            elapsed = time.perf_counter() - started
            assert r.ok, r
            kept, dropped = len(r.stdout), r.truncated_bytes
    else:
        from jupyter_client.manager import KernelManager
        import subprocess
        km = KernelManager(kernel_name="python3")
        km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
        base = peak()
        chunks = []
        started = time.perf_counter()
        kc.execute_interactive(code, output_hook=lambda m: chunks.append(m["content"].get("text", "")), timeout=600)
        elapsed = time.perf_counter() - started
        kept, dropped = sum(map(len, chunks)), 0
        kc.stop_channels(); km.shutdown_kernel(now=True)
    print(f"{base:.0f} {peak():.0f} {elapsed:.2f} {kept} {dropped}")
    """
)


def measure(client: str, code: str) -> tuple[float, float, float, int, int]:
    done = subprocess.run([sys.executable, "-c", CHILD, client, code], capture_output=True, text=True, check=True)
    base, peak, elapsed, kept, dropped = done.stdout.split()
    return float(base), float(peak), float(elapsed), int(kept), int(dropped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1000)
    parser.add_argument("--prints", type=int, default=200_000)
    args = parser.parse_args()
    for client in ("kernelexec", "raw"):
        base, peak, elapsed, kept, dropped = measure(client, f"print('x' * {args.megabytes} * 2**20)")
        print(f"{client:10s} print of {args.megabytes} MiB: client peak RSS {peak:.0f} MB "
              f"(was {base:.0f} MB before the call), {elapsed:.1f} s, kept {kept:,} chars, "
              f"dropped {dropped:,} bytes")
    times = {}
    for client in ("kernelexec", "raw"):
        times[client] = min(measure(client, f"for i in range({args.prints}): print(i)")[2] for _ in range(3))
        print(f"{client:10s} {args.prints:,} print calls: {times[client]:.2f} s (best of 3)")
    print(f"ratio kernelexec / raw: {times['kernelexec'] / times['raw']:.2f}x")


if __name__ == "__main__":
    main()
