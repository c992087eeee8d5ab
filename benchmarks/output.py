"""Print-heavy code through kernelexec next to raw jupyter_client, in one run.

Run: python benchmarks/output.py [--rounds 2] [--only lines,small,...] [--no-kernel-bound]

Each measurement is one call in a fresh client process (so its peak RSS is that call's), timed
from sending the code to the end of the call, after a warm-up call. Clients alternate within a
round; the medians over the rounds are printed with their ratio kernelexec / raw. Workloads:

- ``lines``: 524,288 ``print`` calls of 100 bytes (50 MiB), where kernelexec keeps head and tail
- ``small``: 200,000 ``print(i)``, where the cost of each write in the kernel shows
- ``huge``: one ``print`` of 1000 MiB
- ``progress``: 10,000 ``clear_output(wait=True)`` then ``print`` (a progress display)
- ``displays``: 2,000 ``display(i)``

Raw jupyter_client is ``KernelManager`` + the raw channel loop (``execute`` then ``get_iopub_msg``
until the idle status) keeping the text of every stream message and the data of every display
(what a client needs at least). Its kernel's IOPub drops messages past its high-water mark; when
the idle status is lost (30 s of quiet after the reply), the call is timed to its last message
(the line says so).
``--no-kernel-bound`` runs kernelexec with its output bound in the client only (as for kernels
it does not prepare).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap

WORKLOADS = {
    "lines": "line = 'x' * 99\nfor _ in range(524_288):\n    print(line)",
    "small": "for i in range(200_000):\n    print(i)",
    "huge": "print('x' * 1000 * 2**20)",
    "progress": (
        "from IPython.display import clear_output\n"
        "for i in range(10_000):\n    clear_output(wait=True)\n    print(f'step {i}')"
    ),
    "displays": "from IPython.display import display\nfor i in range(2_000):\n    display(i)",
}
LABELS = {
    "lines": "524,288 prints of 100 B (50 MiB)",
    "small": "200,000 print(i)",
    "huge": "one print of 1000 MiB",
    "progress": "10,000 clear_output(wait=True) + print",
    "displays": "2,000 display(i)",
}

CHILD = textwrap.dedent(
    """
    import queue, resource, sys, time
    lost = 0
    client, code, kernel_bound = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if client == "kernelexec":
        import kernelexec as kx
        options = {} if kernel_bound else {"bound_output_in_kernel": False}
        with kx.Session(timeout=900, env={"PYTEST_CURRENT_TEST": None}, **options) as s:
            s.execute("pass")
            base = peak()
            started = time.perf_counter()
            r = s.execute(code)
            elapsed = time.perf_counter() - started
            assert r.ok, r
            kept, dropped = len(r.text), r.truncated_bytes
    else:
        from jupyter_client.manager import KernelManager
        import subprocess
        km = KernelManager(kernel_name="python3")
        km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
        kc.execute_interactive("pass", timeout=60)
        base = peak()
        kept_parts = []
        started = time.perf_counter()
        msg_id = kc.execute(code)
        last, replied = started, False
        while True:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                if not replied:
                    try:
                        replied = bool(kc.get_shell_msg(timeout=0))
                    except queue.Empty:
                        pass
                if replied and time.perf_counter() - last > 30:  # IOPub dropped the idle status
                    lost = 1
                    break
                continue
            last = time.perf_counter()
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            content = msg["content"]
            if "text" in content:
                kept_parts.append(content["text"])
            elif "data" in content:
                kept_parts.append(content["data"].get("text/plain", ""))
            elif content.get("execution_state") == "idle":
                break
        elapsed = last - started  # to the idle status, or the last message when it was lost
        if not replied:
            kc.get_shell_msg(timeout=60)
        kept, dropped = sum(map(len, kept_parts)), 0
        kc.stop_channels(); km.shutdown_kernel(now=True)
    print(f"{base:.0f} {peak():.0f} {elapsed:.4f} {kept} {dropped} {lost}")
    """
)


def measure(client: str, code: str, kernel_bound: bool) -> tuple[float, float, float, int, int, int]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, client, code, "1" if kernel_bound else "0"],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"{client} failed:\n{done.stderr}")
    base, peak, elapsed, kept, dropped, lost = done.stdout.split()
    return float(base), float(peak), float(elapsed), int(kept), int(dropped), int(lost)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--no-kernel-bound", action="store_true")
    args = parser.parse_args()
    names = args.only.split(",")
    runs: dict[tuple[str, str], list[tuple[float, float, float, int, int, int]]] = {}
    for round_number in range(args.rounds):
        for name in names:
            clients = ("kernelexec", "raw") if round_number % 2 == 0 else ("raw", "kernelexec")
            for client in clients:
                sample = measure(client, WORKLOADS[name], not args.no_kernel_bound)
                runs.setdefault((name, client), []).append(sample)
                lost = "  (idle status lost: timed to the last message)" if sample[5] else ""
                print(f"  round {round_number + 1} {name:9s} {client:10s} {sample[2]:8.3f} s"
                      f"  peak RSS {sample[1]:.0f} MB (base {sample[0]:.0f}){lost}", flush=True)
    print(f"\nmedians of {args.rounds} rounds (time of the call; client peak RSS, max over rounds):")
    print(f"| workload | kernelexec | raw jupyter_client | ratio | peak RSS kernelexec / raw |")
    print("|---|---|---|---|---|")
    for name in names:
        ours, raw = runs[(name, "kernelexec")], runs[(name, "raw")]
        ours_time = statistics.median(sample[2] for sample in ours)
        raw_time = statistics.median(sample[2] for sample in raw)
        ours_peak, raw_peak = max(sample[1] for sample in ours), max(sample[1] for sample in raw)
        print(f"| {LABELS[name]} | {ours_time:.2f} s | {raw_time:.2f} s | {ours_time / raw_time:.2f}x "
              f"| {ours_peak:.0f} MB / {raw_peak:.0f} MB |")
    print("\nkept text (chars) / truncated bytes, kernelexec:",
          ", ".join(f"{name} {runs[(name, 'kernelexec')][0][3]:,}/{runs[(name, 'kernelexec')][0][4]:,}"
                    for name in names))


if __name__ == "__main__":
    main()
