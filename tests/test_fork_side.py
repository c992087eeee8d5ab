"""Checkpoints of live kernels (kernelexec._fork_side): fork children rebuilt as kernels with the
source's state. Real processes: live kernels started by jupyter_client's KernelManager, their
checkpoints, and BlockingKernelClients talking to the copies."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time

import psutil
import pytest
from forking import SOURCE, Forks, wait_for_bytes
from forking import client_loop_fixture, forks_fixture  # noqa: F401 (the fixtures)

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(sys.platform != "linux", reason="Linux only")]


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
    # stop_on_error=False: the next request is sent as soon as this reply is read, before the
    # kernel's idle (ipykernel would abort it if it came before its "stop aborting" message)
    msg_id = copy.client.execute("print('sleeping', flush=True); time.sleep(30)", stop_on_error=False)
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
