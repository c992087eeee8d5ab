"""Fork servers (kernelexec._fork_server): the protocol, and a template whose fork children are
fresh kernels. Real processes: a template started with ``python -c``, BlockingKernelClients."""

from __future__ import annotations

import os
import signal
import sys
import tempfile

import psutil
import pytest
from forking import Forks, wait_for_bytes
from forking import client_loop_fixture, forks_fixture  # noqa: F401 (the fixtures)

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(sys.platform != "linux", reason="Linux only")]


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
