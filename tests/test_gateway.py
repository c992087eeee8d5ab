"""Sessions on a real Jupyter Kernel Gateway: the same results and guarantees as local kernels.

Each gateway is a ``python -m kernel_gateway`` on 127.0.0.1 with a token; its kernels are its
child processes, so the leak check sees a kernel left behind on the gateway too.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psutil
import pytest

import kernelexec as kx
from kernelexec._collector import OutputCollector
from kernelexec._gateway import output_dropped_notice

pytestmark = pytest.mark.timeout(90)

TOKEN = "test-token-6"
SIGINT_PROOF_SLEEP = (
    "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "print('started', flush=True)\ntime.sleep(600)\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Gateway:
    """A Kernel Gateway process we started, and how to reach it."""

    port: int
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    runtime_dir: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gateway:
        # Its own runtime dir: the kernels' connection files are the gateway's, not the client's.
        self.runtime_dir = tempfile.mkdtemp(prefix="kxgw-")
        env = dict(os.environ, KG_AUTH_TOKEN=TOKEN, JUPYTER_RUNTIME_DIR=self.runtime_dir)
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                f"--KernelGatewayApp.port={self.port}", "--KernelGatewayApp.port_retries=0",
                *self.extra_args,
            ],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the gateway on port {self.port} did not start within 30 s")
            time.sleep(0.1)
        return self

    def kernel_processes(self) -> list[psutil.Process]:
        assert self.process is not None
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> list[psutil.Process]:
        """SIGKILL the gateway (as a crash would); returns its orphaned kernels."""
        assert self.process is not None
        orphans = self.kernel_processes()
        self.process.kill()
        self.process.wait()
        return orphans

    def stop(self) -> None:
        """SIGTERM (the gateway deletes its kernels), then make sure nothing is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            kernels = self.kernel_processes()
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            reap(kernels)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def rest(self, method: str, path: str) -> int:
        request = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {TOKEN}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0  # not listening (yet, or any more)

    def _answers(self) -> bool:
        return self.rest("GET", "/api") == 200


def reap(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=5)


@pytest.fixture(scope="module")
def gateway(private_runtime_dir: str) -> Iterator[Gateway]:
    """One gateway for the module, without the IOPub rate limit (as the README advises)."""
    gateway = Gateway(free_port(), ["--ZMQChannelsWebsocketConnection.limit_rate=False"]).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def start_gateway(private_runtime_dir: str) -> Iterator[Callable[..., Gateway]]:
    """Start gateways of the test's own (to kill, or with other settings); all stopped after."""
    started: list[Gateway] = []

    def start(*extra_args: str, port: int | None = None) -> Gateway:
        gateway = Gateway(port or free_port(), list(extra_args)).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway_session(gateway: Gateway) -> Iterator[kx.Session]:
    """A running gateway session for tests where kernel state does not matter."""
    with kx.Session(gateway_url=gateway.url, gateway_token=TOKEN, timeout=30) as session:
        yield session


def gateway_options(gateway: Gateway, **options: object) -> dict[str, object]:
    return {"gateway_url": gateway.url, "gateway_token": TOKEN, **options}


# The same results as a local kernel


def test_state_persists_and_outputs_arrive(gateway_session):
    r = gateway_session.execute("import math, sys\nx = math.sqrt(2)\nprint('out')\nx")
    assert r.ok and (r.stdout, r.result) == ("out\n", "1.4142135623730951")
    assert gateway_session.execute("x * 2").result == "2.8284271247461903"
    assert gateway_session.kernel_id and gateway_session.is_alive


def test_error_has_traceback_and_real_frames(gateway_session):
    r = gateway_session.execute("def f():\n    return 1 / 0\nf()")
    assert r.status == "error" and r.error.ename == "ZeroDivisionError"
    assert [(f.name, f.line) for f in r.error.frames] == [("<module>", "f()"), ("f", "return 1 / 0")]
    assert "ZeroDivisionError" in r.error.text and "\x1b[" not in r.error.text


def test_timeout_interrupts_and_keeps_state(gateway):
    with kx.Session(**gateway_options(gateway, timeout=30)) as s:
        s.execute("kept = 42")
        started = time.monotonic()
        r = s.execute("import time\nprint('before', flush=True)\ntime.sleep(60)", timeout=1)
        assert r.status == "timeout" and not r.restarted
        assert r.stdout == "before\n" and r.error.ename == "TimeoutError"
        assert time.monotonic() - started < 1 + s.options.interrupt_grace
        assert s.execute("kept").result == "42"


def test_timeout_restarts_a_kernel_that_ignores_the_interrupt(gateway):
    with kx.Session(**gateway_options(gateway, timeout=30, interrupt_grace=1)) as s:
        s.execute("lost = 1")
        first_kernel = s.kernel_id
        started = time.monotonic()
        r = s.execute(SIGINT_PROOF_SLEEP, timeout=1)
        elapsed = time.monotonic() - started
        assert r.status == "timeout" and r.restarted and r.stdout == "started\n"
        assert elapsed < 1 + 1 + 15  # timeout + grace + deleting the hung kernel on the gateway
        assert s.kernel_id != first_kernel
        assert s.execute("'lost' in dir()").result == "False"


def test_interrupt_from_another_thread(gateway):
    with kx.Session(**gateway_options(gateway)) as s:
        timer = threading.Timer(1.0, s.interrupt)
        timer.start()
        r = s.execute("import time\ntime.sleep(30)")
        timer.join()
        assert r.status == "interrupted" and r.error.ename == "KeyboardInterrupt"


def test_os_exit_gives_died_with_output_kept_and_a_fresh_kernel(gateway):
    with kx.Session(**gateway_options(gateway)) as s:
        first_kernel = s.kernel_id
        r = s.execute("import os\nprint('last words', flush=True)\nos._exit(3)")
        assert r.status == "died" and r.restarted
        assert r.stdout == "last words\n"
        assert "kernel process died" in r.error.evalue and gateway.url in r.error.evalue
        assert s.kernel_id != first_kernel
        assert s.execute("1 + 1").result == "2"


def test_big_output_is_truncated_head_and_tail(gateway):
    with kx.Session(**gateway_options(gateway, max_output_bytes=10_000)) as s:
        r = s.execute("print('HEAD'); print('x' * 5_000_000); print('TAIL')")
        assert r.ok and r.truncated_bytes > 4_900_000
        assert r.text.startswith("HEAD") and r.text.rstrip().endswith("TAIL")
        assert "bytes truncated" in r.text and len(r.text) < 11_000


def test_gateway_rate_limit_shows_as_truncation(start_gateway):
    limited = start_gateway("--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=100000")
    with kx.Session(gateway_url=limited.url, gateway_token=TOKEN) as s:
        r = s.execute("for i in range(2000):\n    print('y' * 1000, flush=True)\nprint('end')")
        assert r.ok and r.truncated_bytes > 0
        assert "output dropped by the gateway: IOPub data rate exceeded" in r.text
        assert "IOPub data rate exceeded.\nThe Jupyter server" not in r.text  # the notice is replaced


def test_many_sessions_at_once(gateway):
    with kx.SessionManager(pool_size=2, **gateway_options(gateway)) as m:
        def work(index: int) -> None:
            m.execute(f"agent-{index}", f"mine = {index}")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [m.execute(f"agent-{i}", "mine").result for i in range(6)] == [str(i) for i in range(6)]
        assert len({info.kernel_id for info in m.list()}) == 6


def test_async_session_on_a_gateway(gateway):
    async def main() -> list[kx.ExecutionResult]:
        async with kx.AsyncSession(**gateway_options(gateway)) as s:
            return await asyncio.gather(s.execute("a = 1"), s.execute("a + 1"))

    results = asyncio.run(main())
    assert [r.status for r in results] == ["ok", "ok"] and results[1].result == "2"


# Failures over the network


def test_gateway_killed_mid_call_gives_died_then_a_new_kernel_once_it_is_back(start_gateway):
    fragile = start_gateway()
    with kx.Session(gateway_url=fragile.url, gateway_token=TOKEN, timeout=30) as s:
        orphans: list[psutil.Process] = []
        killer = threading.Timer(1.5, lambda: orphans.extend(fragile.kill()))
        killer.start()
        started = time.monotonic()
        r = s.execute("import time\nprint('working', flush=True)\ntime.sleep(20)")
        killer.join()
        reap(orphans)
        assert time.monotonic() - started < 10
        assert r.status == "died" and r.stdout == "working\n"
        assert "lost the connection to the gateway" in r.error.evalue and fragile.url in r.error.evalue
        with pytest.raises(kx.KernelStartError, match=fragile.url):
            s.execute("1")  # the gateway is still down: say so
        start_gateway(port=fragile.port)
        assert s.execute("'time' in dir()").result == "False"  # a new kernel on the new gateway


def test_kernel_deleted_on_the_gateway_is_detected_not_a_hang(gateway):
    """What a gateway that culls idle kernels does to a session that was not looking."""
    with kx.Session(**gateway_options(gateway, timeout=30)) as s:
        s.execute("x = 1")
        assert gateway.rest("DELETE", f"/api/kernels/{s.kernel_id}") == 204
        started = time.monotonic()
        r = s.execute("x")
        assert time.monotonic() - started < 10
        assert r.status == "died" and r.restarted
        assert "no longer has the kernel" in r.error.evalue
        assert s.execute("'x' in dir()").result == "False"


def test_unreachable_gateway_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(kx.KernelStartError, match=f"{url}.*reachable"):
        kx.Session(gateway_url=url, gateway_token=TOKEN).start()


def test_bad_token_is_a_clear_error(gateway):
    with pytest.raises(kx.KernelStartError, match="401.*gateway_token"):
        kx.Session(gateway_url=gateway.url, gateway_token="wrong").start()


def test_shutdown_deletes_the_kernel_on_the_gateway(gateway):
    s = kx.Session(**gateway_options(gateway)).start()
    kernel_id = s.kernel_id
    assert gateway.rest("GET", f"/api/kernels/{kernel_id}") == 200
    s.shutdown()
    assert gateway.rest("GET", f"/api/kernels/{kernel_id}") == 404


@pytest.mark.parametrize(
    "options",
    [
        {"gateway_url": "ftp://host"},
        {"gateway_url": "host:8888"},
        {"gateway_url": "http://host", "gateway_token": 5},
        {"gateway_url": "http://host", "gateway_headers": {"X-A": 1}},
        {"gateway_url": "http://host", "gateway_validate_cert": "no"},
        {"gateway_url": "http://host", "max_processes": 64},
        {"gateway_token": "t"},
    ],
)
def test_bad_gateway_options_fail_at_construction(options, tmp_path):
    with pytest.raises(kx.InvalidArgument):
        kx.Session(**options)
    with pytest.raises(kx.InvalidArgument, match="local kernels only"):
        kx.Session(gateway_url="http://host", cwd=str(tmp_path))


def test_token_is_not_in_the_options_repr():
    options = kx.Session(gateway_url="http://host", gateway_token="s3cret").options
    assert "s3cret" not in repr(options)


def test_the_gateway_path_is_not_imported_for_local_sessions():
    code = (
        "import sys, kernelexec as kx\n"
        "with kx.Session() as s:\n    assert s.execute('1').ok\n"
        "print(sorted(m for m in sys.modules if 'gateway' in m or m.startswith('tornado.websocket')"
        " or m.startswith('tornado.httpclient')))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=root),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().replace("'", '"')) == []


# The collector, fed plain dicts


def test_collector_reports_output_dropped_by_the_gateway_as_truncation():
    collector = OutputCollector("m1", max_output_bytes=1000)
    parent = {"msg_id": "m1"}
    collector.feed("iopub", {"header": {"msg_type": "stream"}, "parent_header": parent,
                             "content": {"name": "stdout", "text": "before\n"}})  # fmt: skip
    collector.feed("iopub", output_dropped_notice({"header": {"msg_type": "stream"}, "parent_header": parent,
                             "content": {"name": "stderr", "text": "IOPub data rate exceeded.\n..."}}))  # fmt: skip
    assert collector.truncated_bytes >= 1
    texts = [output.text for output in collector.outputs()]
    assert texts[0] == "before\n" and "IOPub data rate exceeded;" in texts[1]


def test_a_dropped_websocket_is_reopened_and_the_call_completes(gateway):
    with kx.Session(**gateway_options(gateway, timeout=30)) as s:
        s.execute("kept = 7")
        kernel = s._state.kernel
        first_socket = kernel._socket
        # Cut the TCP connection under the websocket, as a network failure would, mid-call.
        stream = first_socket._connection.protocol.stream
        cut = threading.Timer(1.0, lambda: s._lease.loop.call_soon_threadsafe(stream.close))
        cut.start()
        r = s.execute("import time\nprint('a', flush=True)\ntime.sleep(2)\nprint('b', flush=True)\nkept")
        cut.join()
        assert kernel._socket is not first_socket  # reconnected, same kernel
        assert r.ok and r.stdout == "a\nb\n" and r.result == "7" and not r.restarted
