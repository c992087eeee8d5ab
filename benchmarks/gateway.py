"""Round-trip latency and session start through a Jupyter Kernel Gateway, next to local kernels.

Run: python benchmarks/gateway.py [--calls 200] [--starts 5]

Starts a Kernel Gateway on 127.0.0.1 (a free port, a token), then times, in alternating rounds so
that machine drift hits all alike: a trivial call on a warm local session, on a warm gateway
session, and on a gateway session without quick ACKs (showing what they are for). Then cold
session starts (start to first result) locally and through the gateway. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import kernelexec as kx
from _timing import ms, time_calls
from kernelexec import _gateway_wire

TOKEN = "benchmark-token"
STATEMENT = "x = x + 1"


@contextmanager
def kernel_gateway() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runtime_dir = tempfile.mkdtemp(prefix="kxgw-")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={port}", "--KernelGatewayApp.port_retries=0",
            "--ZMQChannelsWebsocketConnection.limit_rate=False",
        ],
        env=dict(os.environ, KG_AUTH_TOKEN=TOKEN, JUPYTER_RUNTIME_DIR=runtime_dir),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/api", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the Kernel Gateway did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(runtime_dir, ignore_errors=True)


def round_trips(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"local": [], "gateway": [], "gateway, no quick ACK": []}
    ack_now = _gateway_wire.KernelWebSocket._ack_now
    with kx.Session() as local, kx.Session(gateway_url=url, gateway_token=TOKEN) as remote:
        for session in (local, remote):
            session.execute("x = 0")

        def run(session: kx.Session) -> Callable[[], None]:
            return lambda: (session.execute(STATEMENT).ok or sys.exit("a call failed"))

        time_calls(run(local), 20), time_calls(run(remote), 20)  # warm-up
        per_round = max(1, calls // rounds)
        for _ in range(rounds):
            samples["local"] += time_calls(run(local), per_round)
            samples["gateway"] += time_calls(run(remote), per_round)
            _gateway_wire.KernelWebSocket._ack_now = lambda self: None  # type: ignore[method-assign]
            try:
                samples["gateway, no quick ACK"] += time_calls(run(remote), max(1, per_round // 4))
            finally:
                _gateway_wire.KernelWebSocket._ack_now = ack_now  # type: ignore[method-assign]
    return samples


def starts(url: str, count: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"local": [], "gateway": []}
    for _ in range(count):
        for name, options in (("local", {}), ("gateway", {"gateway_url": url, "gateway_token": TOKEN})):
            started = time.perf_counter()
            with kx.Session(**options) as session:
                session.execute("1")
                samples[name].append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="round trips per session")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--starts", type=int, default=5, help="cold starts per kind")
    args = parser.parse_args()
    with kernel_gateway() as url:
        trips = round_trips(url, args.calls, args.rounds)
        cold = starts(url, args.starts)
    local_trip, local_start = ms(trips["local"]), ms(cold["local"])
    print(f"round trip ({len(trips['local'])} calls each, median):")
    for name, samples in trips.items():
        print(f"  {name:<24}{ms(samples):8.2f} ms   x{ms(samples) / local_trip:.2f}")
    print(f"session start to first result ({args.starts} each, median):")
    for name, samples in cold.items():
        print(f"  {name:<24}{ms(samples):8.0f} ms   x{ms(samples) / local_start:.2f}")


if __name__ == "__main__":
    main()
