"""The kernel side of forks: a template's children and a live kernel's checkpoints become kernels.

Real processes throughout: a template started with ``python -c``, live kernels started by
jupyter_client's KernelManager, and BlockingKernelClients talking to the forked kernels over the
protocol of ``kernelexec._fork_server``. Checkpoint servers and their kernels are not children of
the test process (double fork), so every test kills what it made, by process group.
"""

from __future__ import annotations

import inspect
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import psutil
import pytest
from jupyter_client import BlockingKernelClient, KernelManager
from jupyter_client.connect import write_connection_file

from kernelexec import _fork_server, _fork_side, _kernel_side

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(sys.platform != "linux", reason="Linux only")]

SOURCE = inspect.getsource(_fork_server) + "\n" + inspect.getsource(_fork_side)
HISTORY = "--HistoryManager.hist_file=:memory:"


class Server:
    """A connection to a fork server: requests, and the events that arrive meanwhile."""

    def __init__(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("rb")
        self.events: list[dict] = []

    def send(self, line: bytes) -> dict:
        self.sock.sendall(line)
        while True:
            message = self._read()
            if "event" not in message:
                return message

    def request(self, **request: object) -> dict:
        return self.send((json.dumps(request) + "\n").encode())

    def _read(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise EOFError("the server closed the connection")
        message = json.loads(line)
        if "event" in message:
            self.events.append(message)
        return message

    def exited(self, pid: int) -> int:
        """The returncode of ``pid``, from its ``exited`` event."""
        while True:
            for event in self.events:
                if event["pid"] == pid:
                    return event["returncode"]
            self._read()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Kernel:
    """A forked kernel: its client, pid (= process group) and stderr file."""

    def __init__(self, client: BlockingKernelClient, pid: int, stderr_path: str) -> None:
        self.client, self.pid, self.stderr_path = client, pid, stderr_path

    def run(self, code: str, timeout: float = 60, silent: bool = False) -> tuple[dict, str, list[str]]:
        """(reply content, stream text, execute_result texts)."""
        outputs: list[dict] = []
        reply = self.client.execute_interactive(code, silent=silent, timeout=timeout, output_hook=outputs.append)
        text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
        results = [m["content"]["data"]["text/plain"] for m in outputs if m["msg_type"] == "execute_result"]
        return reply["content"], text, results

    def value(self, expression: str) -> str:
        """The execute_result of ``expression``."""
        content, text, results = self.run(expression)
        assert content["status"] == "ok", content
        return results[0]

    def result_data(self, expression: str) -> dict:
        """The execute_result bundle of ``expression``."""
        outputs: list[dict] = []
        self.client.execute_interactive(expression, timeout=60, output_hook=outputs.append)
        return next(m["content"]["data"] for m in outputs if m["msg_type"] == "execute_result")

    def repr(self, expression: str) -> str:
        """``repr()`` of ``expression`` in the kernel (not pretty-printed)."""
        content, text, _ = self.run(f"print(repr(({expression})))")
        assert content["status"] == "ok", content
        return text.rstrip("\n")

    def private(self, call: str, source: str = SOURCE, name: str = "__kernelexec_fork__") -> str:
        """Run ``source + call`` silently in a private namespace, as the client does; its output."""
        code = f"exec(compile({source + chr(10) + call!r}, '<kernelexec>', 'exec'), {{'__name__': {name!r}}})"
        content, text, _ = self.run(code, silent=True)
        assert content["status"] == "ok", content
        return text

    def install_kernelexec(self) -> None:
        self.private("install(100000, None, None, 10**7)", inspect.getsource(_kernel_side), "__kernelexec__")

    def checkpoint(self, path: str) -> dict:
        return json.loads(self.private(f"checkpoint({path!r})").strip().splitlines()[-1])


class Forks:
    """Makes template servers, live kernels and forked kernels in a private directory, and
    kills them all at the end."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kxf-")  # short: AF_UNIX paths are limited
        self.env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8"}
        self.groups: list[int] = []  # process groups to kill: forked kernels, checkpoint servers
        self.clients: list[BlockingKernelClient] = []
        self.templates: list[subprocess.Popen] = []
        self.managers: list[KernelManager] = []
        self.servers: list[Server] = []
        self.count = 0

    def template(self) -> Server:
        path = os.path.join(self.dir, f"t{len(self.templates)}.sock")
        code = SOURCE + f"\nserve_template({path!r})"
        self.templates.append(subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL))
        return self.connect(path)

    def connect(self, path: str) -> Server:
        server = Server(path)
        self.servers.append(server)
        return server

    def live_kernel(self) -> Kernel:
        """A kernel started as kernelexec starts one, with its machinery fds noted."""
        manager = KernelManager(transport="ipc", ip=os.path.join(self.dir, f"live{len(self.managers)}"))
        self.managers.append(manager)
        stderr_path = os.path.join(self.dir, f"live{len(self.managers)}.err")
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # ipykernel checks it
        with open(stderr_path, "w") as stderr:
            manager.start_kernel(extra_arguments=[HISTORY], env=env, stderr=stderr)
        client = manager.client()
        client.start_channels()
        self.clients.append(client)
        client.wait_for_ready(timeout=60)
        kernel = Kernel(client, manager.provisioner.process.pid, stderr_path)
        kernel.private("note_machinery_fds()")
        return kernel

    def checkpoint(self, kernel: Kernel) -> tuple[Server, dict]:
        self.count += 1
        path = os.path.join(self.dir, f"cp{self.count}.sock")
        made = kernel.checkpoint(path)
        self.groups.append(made["pid"])
        return self.connect(path), made

    def fork(self, server: Server, ready: bool = True, **overrides: object) -> Kernel:
        self.count += 1
        name = os.path.join(self.dir, f"k{self.count}")
        connection_file, stderr_path = name + ".json", name + ".err"
        write_connection_file(connection_file, transport="ipc", ip=name, key=secrets.token_hex(16).encode())
        with open(stderr_path, "w"):
            pass
        request = {"op": "fork", "id": str(self.count), "connection_file": connection_file,
                   "stderr_path": stderr_path, "env": self.env, "cwd": None, "argv": [HISTORY]}
        request.update(overrides)
        reply = server.request(**request)
        assert reply["ok"] and reply["id"] == str(self.count), reply
        self.groups.append(reply["pid"])
        client = BlockingKernelClient(connection_file=connection_file)
        client.load_connection_file()
        client.start_channels()
        self.clients.append(client)
        if ready:
            client.wait_for_ready(timeout=60)
        return Kernel(client, reply["pid"], stderr_path)

    def kill(self, kernel: Kernel) -> None:
        kernel.client.stop_channels()
        os.killpg(kernel.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        for client in self.clients:
            client.stop_channels()
        for server in self.servers:
            server.close()
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for manager in self.managers:
            manager.shutdown_kernel(now=True)
        for template in self.templates:
            template.kill()
            template.wait(30)
        wait_gone(self.groups)
        leaked = holders(self.dir)  # a server or kernel nobody knew of (not our descendants)
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        wait_gone(leaked)
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not leaked, f"processes left holding files of the test: {leaked}"


def holders(directory: str) -> list[int]:
    """Live processes (not this one) with a descriptor on a file under ``directory``: every
    server and kernel a test makes has one (a copy's stderr file, its source's)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.status() != psutil.STATUS_ZOMBIE:
                if any(f.path.startswith(directory + "/") for f in process.open_files()):
                    found.append(process.pid)
        except psutil.Error:
            continue
    return found


def wait_for_bytes(path: str, data: bytes, timeout: float = 30) -> None:
    """Wait until the file at ``path`` contains ``data``."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path, "rb") as file:
            if data in file.read():
                return
        assert time.monotonic() < deadline, f"{data!r} never reached {path}"
        time.sleep(0.05)


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"process {pid} is still running")


@pytest.fixture(scope="module", autouse=True)
def client_loop() -> Iterator[None]:
    """The event loop jupyter_client's blocking methods make once per thread, made before the
    tests' leak baselines and closed after them."""
    from jupyter_core.utils import ensure_event_loop

    loop = ensure_event_loop()
    yield
    loop.close()


@pytest.fixture
def forks() -> Iterator[Forks]:
    made = Forks()
    try:
        yield made
    finally:
        made.cleanup()


def test_template_children_are_fresh_kernels_set_up_as_asked(forks: Forks) -> None:
    template = forks.template()
    assert template.request(op="ping") == {"ok": True, "pid": forks.templates[0].pid}
    os.environ["KXF_ONLY_IN_TEMPLATE"] = "1"  # the template was started with it...
    try:
        env = dict(forks.env, KXF_ONLY_IN_REQUEST="yes")
        cwd = tempfile.mkdtemp(dir=forks.dir)
        first = forks.fork(template, env=env, cwd=cwd, rlimits={"RLIMIT_AS": 6 * 2**30})
    finally:
        del os.environ["KXF_ONLY_IN_TEMPLATE"]
    second = forks.fork(template)
    first.run("import os, resource")
    probe = "os.environ.get('KXF_ONLY_IN_REQUEST'), os.environ.get('KXF_ONLY_IN_TEMPLATE'), os.getcwd(), resource.getrlimit(resource.RLIMIT_AS), os.getpgid(0) == os.getpid(), 'JPY_PARENT_PID' in os.environ"
    assert first.repr(probe) == repr(("yes", None, cwd, (6 * 2**30,) * 2, True, False))
    assert first.value("os.write(2, b'to fd 2\\n')") == "8"
    assert second.value("1 + 1") == "2" and second.pid != first.pid
    wait_for_bytes(first.stderr_path, b"to fd 2")

    # The template is a subreaper: an orphan of its kernel is reparented to it and reported.
    orphan = int(first.value("import subprocess; subprocess.Popen(['sleep', '60']).pid"))
    first.client.execute("os._exit(3)")
    assert template.exited(first.pid) == 3
    assert psutil.Process(orphan).ppid() == forks.templates[0].pid
    os.kill(orphan, signal.SIGKILL)
    assert template.exited(orphan) == -signal.SIGKILL
    os.kill(second.pid, signal.SIGKILL)
    assert template.exited(second.pid) == -signal.SIGKILL

    bystander = forks.connect(os.path.join(forks.dir, "t0.sock"))
    assert bystander.request(op="ping")["ok"]
    assert template.request(op="close") == {"ok": True}
    assert bystander.reader.readline() == b""  # the reply went to the asker only
    assert forks.templates[0].wait(30) == 0
    assert not os.path.exists(os.path.join(forks.dir, "t0.sock"))


def test_server_answers_bad_requests_and_tells_every_connection(forks: Forks) -> None:
    template = forks.template()
    other = forks.connect(os.path.join(forks.dir, "t0.sock"))
    assert template.send(b"not json\n")["ok"] is False
    assert template.request(op="dance") == {"ok": False, "error": "unknown op 'dance'"}
    bad = {"op": "fork", "id": "x", "connection_file": "/nonexistent.json", "env": {}, "stderr_path": "/nonexistent/err"}
    reply = template.request(**bad)
    assert reply["id"] == "x" and reply["ok"] is False and "nonexistent" in reply["error"]
    reply = template.request(**dict(bad, env={"A": 1}))
    assert reply == {"id": "x", "ok": False, "error": "fork: 'env' must map names to str values"}
    # A child that cannot become a kernel (its connection file is garbage) exits 70, and every
    # connection hears of it.
    stderr_path, connection_file = os.path.join(forks.dir, "bad.err"), os.path.join(forks.dir, "bad.json")
    with open(stderr_path, "w"):
        pass
    with open(connection_file, "w") as garbage:
        garbage.write("{not json")
    reply = template.request(**dict(bad, stderr_path=stderr_path, connection_file=connection_file, cwd="/"))
    assert reply["ok"], reply
    assert template.exited(reply["pid"]) == 70 and other.exited(reply["pid"]) == 70
    wait_for_bytes(stderr_path, b"Traceback")
    assert other.request(op="ping")["ok"]
    forks.templates[0].terminate()  # SIGTERM: the server unlinks its socket and exits
    assert forks.templates[0].wait(30) == 0
    assert not os.path.exists(os.path.join(forks.dir, "t0.sock"))


def test_a_template_kernel_can_be_checkpointed_and_the_template_reaps_the_checkpoint(forks: Forks) -> None:
    template = forks.template()
    kernel = forks.fork(template)  # it noted its machinery fds itself
    kernel.run("z = 5")
    server, made = forks.checkpoint(kernel)
    assert psutil.Process(made["pid"]).ppid() == forks.templates[0].pid  # double fork: an orphan
    assert forks.fork(server).value("z") == "5"
    assert kernel.value("z") == "5"
    assert server.request(op="close") == {"ok": True}
    assert template.exited(made["pid"]) == 0


def test_checkpoint_copies_are_independent_kernels_with_the_source_state(forks: Forks) -> None:
    numpy = pytest.importorskip("numpy")
    source = forks.live_kernel()
    here = tempfile.mkdtemp(dir=forks.dir)
    content, _, _ = source.run(
        f"x = 41\ndef inc(v): return v + 1\nimport numpy as np\n%cd {here}\n"
        "import os, threading, logging, sys\nstop = threading.Event()\n"
        "threading.Thread(target=stop.wait, name='user-waiter', daemon=True).start()\n"
        "log = logging.getLogger('user'); log.addHandler(logging.StreamHandler(sys.stdout))\n"
        "class Rich:\n    def _repr_html_(self): return '<b>rich</b>'\n"
        "import signal\ndef on_term(*args): pass\nsignal.signal(signal.SIGTERM, on_term)"
    )
    assert content["status"] == "ok"
    server, made = forks.checkpoint(source)
    assert made["threads"] == ["user-waiter"]
    assert server.request(op="ping") == {"ok": True, "pid": made["pid"]}
    one, two = forks.fork(server), forks.fork(server)
    for copy in (one, two):
        assert copy.repr("x, inc(x), np.__version__, os.getcwd()") == repr((41, 42, numpy.__version__, here))
    assert one.run("x += 1")[0]["execution_count"] == 3  # the source had run 1 cell; the check 1
    assert (one.value("x"), two.value("x"), source.value("x")) == ("42", "41", "41")
    # In: '', the source's cell, then the copy's own four (this one included).
    assert one.repr("In[1].startswith('x = 41'), len(In)") == "(True, 6)"
    assert one.result_data("Rich()")["text/html"] == "<b>rich</b>"  # IPython's display hook
    assert one.repr("signal.getsignal(signal.SIGTERM) is on_term, sys.argv[sys.argv.index('-f') + 1]") == repr(
        (True, one.client.connection_file)
    )
    # A handler made in the source holds the source's sys.stdout: its output reaches the copy's client.
    assert one.run("log.warning('from a copy')")[1] == "from a copy\n"
    assert "user-waiter" not in one.value("[t.name for t in threading.enumerate()]")
    assert source.run("print('source alive')")[1] == "source alive\n"


def test_checkpoint_is_idle_and_shares_memory_until_written(forks: Forks) -> None:
    source = forks.live_kernel()
    assert source.run("big = b'x' * (300 * 2**20)")[0]["status"] == "ok"
    server, made = forks.checkpoint(source)
    checkpoint = psutil.Process(made["pid"])
    before = checkpoint.cpu_times()
    time.sleep(1)
    after = checkpoint.cpu_times()
    assert (after.user + after.system) - (before.user + before.system) < 0.02
    copy = forks.fork(server)
    assert copy.value("len(big)") == str(300 * 2**20)
    assert psutil.Process(copy.pid).memory_full_info().uss < 100 * 2**20
    copy.run("big = bytearray(big)")  # now it is the copy's own
    assert psutil.Process(copy.pid).memory_full_info().uss > 250 * 2**20


def test_restored_kernel_has_its_stderr_file_and_can_be_interrupted(forks: Forks) -> None:
    source = forks.live_kernel()
    server, _ = forks.checkpoint(source)
    copy = forks.fork(server)
    copy.run("import os, time; os.write(2, b'copy fd 2\\n')")
    wait_for_bytes(copy.stderr_path, b"copy fd 2")
    msg_id = copy.client.execute("print('sleeping', flush=True); time.sleep(30)")
    while True:  # the cell runs (and SIGINT raises KeyboardInterrupt) once it printed
        message = copy.client.get_iopub_msg(timeout=30)
        if message["parent_header"].get("msg_id") == msg_id and message["msg_type"] == "stream":
            break
    started = time.monotonic()
    os.killpg(copy.pid, signal.SIGINT)
    reply = copy.client.get_shell_msg(timeout=10)["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - started < 5
    assert copy.value("'still usable'") == "'still usable'"
    assert source.value("'source untouched'") == "'source untouched'"


def test_copies_of_copies_run_kernelexec_hooks_afresh(forks: Forks) -> None:
    source = forks.live_kernel()
    source.install_kernelexec()
    source.run("y = 1")
    server, _ = forks.checkpoint(source)
    child = forks.fork(server)
    child.private("note_machinery_fds()")  # as the client does for every ready kernel: a no-op here
    child.install_kernelexec()
    child.run("y += 1")
    server2, _ = forks.checkpoint(child)
    grandchild = forks.fork(server2)
    grandchild.install_kernelexec()
    assert (grandchild.value("y"), child.value("y"), source.value("y")) == ("2", "2", "1")
    # kernelexec's hooks work once each: fd output in order with prints, one error payload.
    text = grandchild.run("import os\nprint('a'); os.write(1, b'b\\n'); print('c')")[1]
    assert text == "a\nb\nc\n"
    payloads = grandchild.run("1/0")[0]["payload"]
    assert [p["source"] for p in payloads] == ["kernelexec.error"]
    threads = grandchild.value("sorted(t.name for t in __import__('threading').enumerate())")
    assert threads.count("kernelexec-fd-reader") == 2


def test_a_copy_holds_user_files_but_no_connection_of_its_source(forks: Forks) -> None:
    source = forks.live_kernel()
    source.run("import os, socket\nf = open(os.__file__)\nr, w = os.pipe(); os.write(w, b'piped')\na, b = socket.socketpair(); b.send(b'sent')")
    server, _ = forks.checkpoint(source)
    copy = forks.fork(server)
    assert copy.value("(f.readline() != '', os.read(r, 5), a.recv(4))") == repr((True, b"piped", b"sent"))

    def shared_ends(pid: int) -> set[str]:
        ends = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(("socket:", "pipe:", "anon_inode:")):
                ends.add(target)
        return ends

    user_ends = {os.readlink(f"/proc/{source.pid}/fd/{fd}") for fd in source.value("(r, w, a.fileno(), b.fileno())").strip("()").split(", ")}
    common = shared_ends(copy.pid) & shared_ends(source.pid) - {"anon_inode:[eventfd]", "anon_inode:[eventpoll]"}
    assert common == user_ends
    inodes = {end[8:-1] for end in shared_ends(copy.pid) if end.startswith("socket:")}
    with open("/proc/net/unix") as table:
        bound_to_source = [row for row in table if forks.dir + "/live" in row and row.split()[6] in inodes]
    assert bound_to_source == []


def test_an_interrupted_checkpoint_leaves_no_server(forks: Forks) -> None:
    source = forks.live_kernel()
    path = os.path.join(forks.dir, "interrupted.sock")
    # The interrupt lands while the kernel waits for the fork: the worst moment.
    source.run("import os, signal\nreal_waitpid = os.waitpid\n"
               "def waitpid(*args):\n    os.kill(os.getpid(), signal.SIGINT)\n    return real_waitpid(*args)")
    code = SOURCE + (
        "\nuser = get_ipython().user_ns\nos.waitpid = user['waitpid']\n"
        f"try:\n    checkpoint({path!r})\nfinally:\n    os.waitpid = user['real_waitpid']"
    )
    content, _, _ = source.run(f"exec(compile({code!r}, '<kernelexec>', 'exec'), {{'__name__': 'kxf'}})")
    assert (content["status"], content.get("ename")) == ("error", "KeyboardInterrupt")
    assert not os.path.exists(path)
    source_file = forks.managers[0].connection_file

    def copies() -> list[psutil.Process]:  # a copy of the source has the source's command line
        return [p for p in psutil.process_iter(["cmdline"]) if source_file in (p.info["cmdline"] or []) and p.pid != source.pid and p.status() != psutil.STATUS_ZOMBIE]

    deadline = time.monotonic() + 30
    while copies():
        assert time.monotonic() < deadline, copies()
        time.sleep(0.05)
    assert source.value("'still fine'") == "'still fine'"


def test_checkpoint_cycles_do_not_grow_the_source(forks: Forks) -> None:
    source = forks.live_kernel()
    process = psutil.Process(source.pid)

    def cycle() -> None:
        server, _ = forks.checkpoint(source)
        copy = forks.fork(server)
        assert copy.value("6 * 7") == "42"
        forks.kill(copy)
        assert server.exited(copy.pid) == -signal.SIGKILL
        assert server.request(op="close") == {"ok": True}

    cycle()  # the first checkpoint's cell makes what every later one reuses
    fds, threads = process.num_fds(), process.num_threads()
    for _ in range(10):
        cycle()
    assert (process.num_fds(), process.num_threads()) == (fds, threads)
