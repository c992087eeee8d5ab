"""Fault battery: hostile output and input, resource abuse and bad configuration.

Every scenario checks what issue 5 promises: control comes back within a stated bound, the status
is the documented one, output produced before the fault is in the result, and the session works
afterwards (or says it was restarted). The autouse ``no_leaks`` fixture fails any scenario that
leaves a process, thread, fd or connection file behind.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

import kernelexec as kx
from kernelexec._cgroups import KernelCgroup

pytestmark = pytest.mark.timeout(90)

MiB = 2**20


class Timed:
    """Runs one call and checks that control came back within ``bound`` seconds."""

    def __init__(self, session: kx.Session) -> None:
        self.session = session

    def __call__(self, code: str, bound: float, **kwargs) -> kx.ExecutionResult:
        started = time.monotonic()
        result = self.session.execute(code, **kwargs)
        elapsed = time.monotonic() - started
        assert elapsed < bound, f"control came back after {elapsed:.1f} s (bound {bound} s): {result}"
        return result


@pytest.fixture(scope="module")
def shared(module_leak_check: None) -> Iterator[kx.Session]:
    # ipykernel does not capture file descriptors 1 and 2 when it sees it runs under pytest.
    with kx.Session(timeout=30, interrupt_grace=2, env={"PYTEST_CURRENT_TEST": None}) as session:
        yield session


@pytest.fixture
def run(shared: kx.Session) -> Timed:
    return Timed(shared)


def still_works(session: kx.Session) -> None:
    result = session.execute("6 * 7")
    assert result.ok and result.result == "42", result


# Hostile output


class PeakRss:
    """The largest growth of this process's resident memory while the block runs."""

    def __enter__(self) -> PeakRss:
        self._process = psutil.Process()
        self._before = self._process.memory_info().rss
        self.growth = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.growth = max(self.growth, self._process.memory_info().rss - self._before)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.timeout(300)
def test_a_400_mib_print_keeps_client_memory_bounded_and_counts_every_byte(run, shared):
    code = "print('H' * 1000 + 'x' * (400 * 2**20) + 'T' * 1000)"
    with PeakRss() as memory:
        # What is tested is memory and counting, not speed: on a loaded machine moving 400 MiB
        # through the kernel's I/O thread took longer than the shared session's 30 s.
        r = run(code, bound=250, timeout=240)
    assert r.ok
    assert r.stdout.startswith("H" * 1000) and r.stdout.rstrip().endswith("T" * 1000)
    total = 400 * MiB + 2001
    assert r.truncated_bytes == total - shared.options.max_output_bytes
    # The text is 400 MiB; raw jupyter_client holds all of it (several times over while decoding).
    assert memory.growth < 150 * MiB, f"client memory grew by {memory.growth / MiB:.0f} MiB"
    still_works(shared)


def test_a_huge_last_expression_is_dropped_in_the_kernel_and_counted(run, shared):
    with PeakRss() as memory:
        r = run("'x' * (300 * 2**20)", bound=60)
    assert r.ok and r.truncated_bytes >= 300 * MiB
    assert "more than max_output_bytes" in r.result
    assert memory.growth < 100 * MiB, f"client memory grew by {memory.growth / MiB:.0f} MiB"
    still_works(shared)


def test_the_timeout_holds_while_output_floods_in():
    with kx.Session(timeout=1) as s:
        # Draining what the kernel had queued may outlast the interrupt grace: then it restarts.
        r = Timed(s)("print('started', flush=True)\nwhile True:\n    print('x' * 100_000)", bound=15)
        assert r.status == "timeout" and r.stdout.startswith("started\n")
        assert r.truncated_bytes > 0
        still_works(s)


def test_output_interleaved_with_a_threads_big_writes_arrives_whole(caplog):
    """A thread's big writes become many pieces sent between the call's own small messages:
    none may be garbled (dropped with a warning), lost or reordered."""
    session = kx.Session(max_output_bytes=100_000_000, env={"PYTEST_CURRENT_TEST": None})
    with caplog.at_level("WARNING", logger="kernelexec"), session as s:
        s.execute(
            "import threading, time\n"
            "def writer():\n"
            "    for _ in range(30):\n"
            "        print('y' * 600_000)\n"
            "        time.sleep(0.05)\n"
            "threading.Thread(target=writer).start()"
        )
        r = Timed(s)("import time\nfor i in range(40):\n    print(i)\n    time.sleep(0.02)", 20)
        assert r.ok and r.truncated_bytes == 0
        # ipykernel reports the thread's output with the call running when it is flushed.
        assert [int(token) for token in r.stdout.replace("y", "").split()] == list(range(40))
        still_works(s)  # while the writer goes on
        s.execute("time.sleep(1.5)")  # the writer is done before the kernel goes
    assert not [r.message for r in caplog.records if "dropped" in r.message]


def test_a_big_write_still_being_queued_when_the_call_ends_arrives_whole():
    """A send takes a big text, then queues it in pieces; the call's last flush must not find
    "nothing to send" meanwhile, or the reply's idle status overtakes the rest (seen under load
    in the test above). Here each piece is made slow, so the call ends while they are queued."""
    with kx.Session(timeout=30, max_output_bytes=100_000_000, env={"PYTEST_CURRENT_TEST": None}) as s:
        s.execute(
            "import sys, time\n"
            "_session = sys.stdout.session\n"
            "_msg = type(_session).msg\n"
            "def slow_msg(self, msg_type, *args, **kwargs):\n"
            "    if msg_type == 'stream':\n"
            "        time.sleep(0.02)\n"
            "    return _msg(self, msg_type, *args, **kwargs)\n"
            "_session.msg = slow_msg.__get__(_session)"
        )
        size = 10 * 2**20  # about 40 pieces: 0.8 s of queueing, begun 0.2 s after the write
        r = s.execute(f"print('y' * {size}, end='')\ntime.sleep(0.3)")
        assert r.ok and r.truncated_bytes == 0 and len(r.stdout) == size, (len(r.stdout), size)


# Makes the I/O thread pause (as a preempted thread would) between reading which call is running
# and rotating the stream's buffers, the next time it flushes this call's stream.
PAUSE_THE_NEXT_TIMER_FLUSH = r"""
import sys, threading, time
bound = next(cb.__self__ for cb in get_ipython().events.callbacks['post_execute'] if getattr(cb, '__name__', '') == 'end_call')
class PausingLock:
    def __init__(self, lock): self.lock, self.armed = lock, False
    def __enter__(self):
        if self.armed and threading.current_thread() is not threading.main_thread():
            self.armed = False
            time.sleep(0.5)
        return self.lock.__enter__()
    def __exit__(self, *exc): return self.lock.__exit__(*exc)
bound.call.lock = PausingLock(bound.call.lock)
print('a', end='')  # arms ipykernel's 0.2 s flush timer, which is never cancelled
sys.stdout.flush()
bound.call.lock.armed = True
"""


def test_a_flush_of_the_last_call_racing_the_next_calls_first_write_loses_nothing():
    """The timer flush reads call A, pauses, and rotates after call B wrote: B's text must still
    be sent at B's end (before, the rotation forgot that B held text, and B's output was lost)."""
    with kx.Session(timeout=30, max_output_bytes=100_000) as s:
        for _ in range(3):
            assert s.execute(PAUSE_THE_NEXT_TIMER_FLUSH).stdout == "a"
            time.sleep(0.3)  # the timer fires, and the flush pauses, while B runs
            assert s.execute("import time\nprint('b')\ntime.sleep(0.5)").stdout == "b\n"


def test_output_written_to_file_descriptor_1_is_captured(run):
    r = run("import os\nos.write(1, b'through fd 1\\n')\nprint('through print')", bound=10)
    assert r.ok and r.stdout == "through fd 1\nthrough print\n"


def test_descriptor_and_print_output_keep_the_order_they_were_written_in(run):
    code = "import os\nfor i in range(300):\n    _ = os.write(1, b'fd %d\\n' % i)\n    print('py', i)"
    r = run(code, bound=20)
    assert r.ok and r.stdout == "".join(f"fd {i}\npy {i}\n" for i in range(300))


def test_a_child_process_output_lands_between_the_prints_around_it(run):
    code = "import subprocess\nprint('before')\n_ = subprocess.run('echo child', shell=True)\nprint('after')"
    r = run(code, bound=10)
    assert r.ok and r.stdout == "before\nchild\nafter\n"


def test_a_character_split_across_descriptor_writes_is_decoded_whole(run):
    r = run("import os\nfor byte in 'né\\n'.encode():\n    _ = os.write(1, bytes([byte]))", bound=10)
    assert r.ok and r.stdout == "né\n"


def test_a_signal_handler_that_prints_while_descriptor_output_is_forwarded(run):
    """The handler can run inside the forwarding of the same thread (which holds its lock)."""
    code = (
        "import os, random, signal\nsignal.signal(signal.SIGALRM, lambda *_: print('tick'))\n"
        "for i in range(2000):\n    signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-5, 3e-4))\n"
        "    _ = os.write(1, b'fd\\n')\n    print(i)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0)\nsignal.signal(signal.SIGALRM, signal.SIG_DFL)\nprint('done')"
    )
    r = run(code, bound=20)
    assert r.ok and r.stdout.endswith("done\n"), r
    assert r.stdout.count("fd\n") == 2000


def test_bytes_written_to_sys_stdout_buffer_are_decoded(run):
    r = run("import sys\nsys.stdout.buffer.write('naïve\\n'.encode())\nsys.stdout.flush()", bound=10)
    assert r.ok and r.stdout == "naïve\n"


def test_invalid_utf8_at_the_file_descriptor_is_replaced_not_fatal(run, shared):
    r = run("import os\n_ = os.write(1, b'bad \\xff\\xfe bytes\\n')", bound=10)
    assert r.ok and "bad \ufffd\ufffd bytes" in r.stdout
    still_works(shared)


def test_a_50_mb_display_payload_is_truncated_and_output_before_it_kept(run, shared):
    code = "print('before')\ndisplay({'text/plain': 'p' * 50_000_000}, raw=True)\nprint('after')"
    r = run(code, bound=30)
    assert r.ok
    assert r.stdout.startswith("before\n") and "after" in r.text
    assert r.truncated_bytes >= 50_000_000 - shared.options.max_output_bytes
    assert len(r.text) <= shared.options.max_output_bytes + 200
    still_works(shared)


def test_ten_thousand_tiny_displays_all_arrive(run):
    r = run("for i in range(10_000):\n    display(i)", bound=60)
    assert r.ok and len(r.outputs) == 10_000
    assert r.outputs[-1].data["text/plain"] == "9999"


# Hostile input and interpreter abuse


def test_input_without_a_handler_is_a_clear_error(run):
    r = run("print('asking', flush=True)\ninput('name? ')", bound=10)
    assert r.status == "error" and r.error.ename == "StdinNotImplementedError"
    assert r.stdout.startswith("asking\n")


def test_input_is_answered_by_the_callers_handler():
    prompts: list[tuple[str, bool]] = []

    def answer(prompt: str, password: bool) -> str:
        prompts.append((prompt, password))
        return "secret" if password else "Ada"

    with kx.Session(input_handler=answer) as s:
        r = Timed(s)("import getpass\nname = input('name? ')\npw = getpass.getpass('pw? ')\nname, pw", 10)
    assert r.ok and r.result == "('Ada', 'secret')"
    assert prompts == [("name? ", False), ("pw? ", True)]


def test_input_at_once_after_start_reaches_the_handler_on_a_busy_machine():
    """The kernel drops an input request sent before our stdin connection is made (seen in one
    start in ten, on a 2-core machine); ``start()`` returns only after that connection is made."""

    def ask_right_after_start(_: int) -> kx.ExecutionResult:
        with kx.Session(input_handler=lambda prompt, password: "Ada", timeout=10) as s:
            return s.execute("input('name? ')")

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask_right_after_start, range(24)))
    assert [r.status for r in results] == ["ok"] * 24, [r for r in results if not r.ok]
    assert {r.result for r in results} == {"'Ada'"}


@pytest.mark.parametrize("call", ["sys.exit()", "sys.exit(3)", "raise SystemExit"])
def test_system_exit_is_an_error_and_keeps_the_kernel(run, shared, call):
    shared.execute("survivor = 1")
    r = run(f"import sys\nprint('before')\n{call}", bound=10)
    assert r.status == "error" and r.error.ename == "SystemExit"
    assert r.stdout.startswith("before\n")
    assert shared.execute("survivor").result == "1"


@pytest.mark.parametrize("call", ["exit()", "quit()"])
def test_exit_and_quit_say_the_session_is_kept(run, shared, call):
    shared.execute("survivor = 1")
    r = run(f"print('before')\n{call}", bound=10)
    assert r.ok and r.stdout == "before\n" and "do not end a kernelexec session" in r.stderr
    time.sleep(0.5)  # IPython would end the kernel a moment after the call
    assert shared.execute("survivor").result == "1"


@pytest.mark.parametrize(
    "vandalism", ["del builtins.len", "builtins.__dict__.clear()", "builtins.print = None"]
)
def test_deleting_builtins_kills_or_spares_the_kernel_but_control_returns(vandalism):
    with kx.Session(timeout=15, interrupt_grace=2) as s:
        # The kernel sends output from its own thread; the sleep lets it leave before the damage.
        code = f"import builtins, time\nprint('before', flush=True)\ntime.sleep(0.2)\n{vandalism}"
        r = Timed(s)(code, bound=30)
        assert r.stdout == "before\n"
        if r.status == "died":
            assert r.restarted and "restarted" in r.error.evalue
        else:
            assert r.status in ("ok", "error", "timeout"), r
            s.restart()  # a kernel without builtins is of no use: start over
        still_works(s)


def test_infinite_recursion_is_a_recursion_error(run, shared):
    r = run("print('before', flush=True)\ndef f():\n    return f()\nf()", bound=20)
    assert r.status == "error" and r.error.ename == "RecursionError", r.error
    assert r.stdout == "before\n"
    still_works(shared)


# Resource limits


def test_over_allocation_under_an_address_space_limit_is_a_memory_error(monkeypatch):
    monkeypatch.setenv("KERNELEXEC_CGROUPS", "pids")  # no memory cgroup: RLIMIT_AS (test_memory.py has both)
    with kx.Session(memory_limit=1024 * MiB) as s:
        s.execute("kept = 'state'")
        r = Timed(s)("print('before', flush=True)\nblob = bytearray(2 * 2**30)", bound=15)
        assert r.status == "error" and r.error.ename == "MemoryError"
        assert r.stdout == "before\n"
        assert s.execute("kept").result == "'state'"
        assert s.execute("small = bytearray(100 * 2**20); len(small)").result == str(100 * MiB)


FORK_BOMB = """\
import os, time
print('before', flush=True)
while True:
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
"""


def test_a_fork_bomb_is_stopped_by_max_processes_and_restart_clears_it():
    with kx.Session(max_processes=48, timeout=30) as s:
        r = Timed(s)(FORK_BOMB, bound=30)
        assert r.status == "error" and r.error.ename in ("BlockingIOError", "OSError")
        assert r.stdout == "before\n"
        started = time.monotonic()
        s.restart()  # the sleeping children hold the slots until the kernel goes
        assert time.monotonic() - started < 20
        assert s.execute("import subprocess; subprocess.run(['true']).returncode").result == "0"


@pytest.fixture(params=["cgroup", "no cgroup"])
def containment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of finding what the code started. Where this process cannot create cgroups the
    first case runs like the second (it is skipped if so); the second imitates such a machine."""
    if request.param == "no cgroup":
        monkeypatch.setattr(KernelCgroup, "create", classmethod(lambda *_, **__: None))
    else:
        probe = KernelCgroup.create(f"kernelexec-probe-{os.getpid()}", max_processes=None, memory_limit=None)
        if probe is None:
            pytest.skip("this process cannot create a pids cgroup")
        probe.kill_and_remove()
    return request.param


def test_processes_the_code_leaves_running_end_with_the_kernel(containment):
    code = (
        "import subprocess\n"
        "grouped = subprocess.Popen(['sleep', '600'])\n"
        "detached = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "print(grouped.pid, detached.pid)"
    )
    with kx.Session() as s:
        pids = [int(pid) for pid in s.execute(code).stdout.split()]
        assert all(psutil.pid_exists(pid) for pid in pids)
    deadline = time.monotonic() + 5
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Bad configuration


def _kernelspec(root, name: str, argv: list[str]) -> None:
    folder = root / "kernels" / name
    folder.mkdir(parents=True)
    spec = {"argv": argv, "display_name": name, "language": "python"}
    (folder / "kernel.json").write_text(json.dumps(spec))


def test_a_kernel_that_never_becomes_ready_fails_within_startup_timeout(tmp_path, monkeypatch):
    _kernelspec(tmp_path, "sleeper", [sys.executable, "-c", "import time; time.sleep(600)", "{connection_file}"])
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(kx.KernelStartError, match="did not become ready within 3 s"):
        kx.Session("sleeper", startup_timeout=3).start()
    assert time.monotonic() - started < 10


def test_a_kernel_that_dies_while_starting_is_reported_at_once(tmp_path, monkeypatch):
    crash = "import sys; sys.stderr.write('cannot start: no GPU\\n'); sys.exit(3)"
    _kernelspec(tmp_path, "crasher", [sys.executable, "-c", crash, "{connection_file}"])
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(kx.KernelStartError, match=r"(?s)died while starting.*code 3.*no GPU"):
        kx.Session("crasher", startup_timeout=30).start()
    assert time.monotonic() - started < 10


def test_an_unknown_kernel_name_lists_the_installed_ones():
    with pytest.raises(kx.KernelStartError, match=r"no kernel spec named 'nope'.*python3"):
        kx.Session("nope").start()


def test_an_unwritable_working_directory_is_refused_up_front():
    with pytest.raises(kx.InvalidArgument, match="cwd '/proc' is not writable"):
        kx.Session(cwd="/proc")


@pytest.mark.parametrize(
    "kwargs",
    [{"max_processes": 3}, {"max_processes": True}, {"memory_limit": 1.5}, {"startup_timeout": float("nan")},
     {"input_handler": "Ada"}, {"inherit_env": "sometimes"}, {"env": {"A": 1}}, {"kernel_name": ""}],
)  # fmt: skip
def test_invalid_arguments_say_what_is_wrong(kwargs):
    (name,) = kwargs
    with pytest.raises(kx.InvalidArgument, match=name):
        kx.Session(**kwargs)


def test_a_flood_on_file_descriptor_2_does_not_fill_the_disk():
    """ipykernel copies fd 2 into the kernel's stderr file (a private, unlinked temporary file,
    reached here through the session's internals): it must stay small however much is written."""
    with kx.Session(timeout=3, env={"PYTEST_CURRENT_TEST": None}) as s:
        r = Timed(s)("import subprocess\nsubprocess.run('yes 0123456789 >&2', shell=True)", bound=20)
        assert r.status == "timeout" and r.truncated_bytes > 50_000_000
        stderr_file = s.async_session._state.kernel._stderr_file
        assert os.fstat(stderr_file.fileno()).st_blocks * 512 < 8 * MiB
        still_works(s)
