"""Fork servers: the protocol, and the template whose fork children become fresh kernels.

Shipped as source, like ``_kernel_side``: it imports nothing from kernelexec and runs on Python >= 3.10.
The client sends this module's source followed by ``_fork_side``'s, as one text: a template runs it
with ``python -c SOURCE + "serve_template(path)"``; a live kernel runs it in a private namespace
(``note_machinery_fds()`` once when ready, ``checkpoint(path)`` from ``_fork_side`` for a copy).

A fork server is one thread blocked in ``poll()`` on an AF_UNIX socket (mode 0600, unlinked on
exit). Clients send JSON objects, one per line, and get each reply on their connection:
``{"op": "ping"}``, ``{"op": "fork", "id", "connection_file", "stderr_path", "env", "cwd", "rlimits",
"argv", "cgroups", "install"}`` (a child in its own session, moved first into the cgroups whose
``cgroup.procs`` files are listed, becomes a kernel on the client's connection file; its pid is
replied only once it leads its process group; ``install``: the ``install(...)`` call of
kernelexec's in-kernel code the child runs before it serves a request), ``{"op": "load",
"source"}`` (compile that code in the server, for its children), ``{"op": "close"}`` (the server exits, its children
stay). Every connection also gets ``{"event": "exited", "pid", "returncode"}`` for each process
the server reaps: its children, and for the template (a subreaper) orphans among their descendants.
"""

import json
import os
import select
import signal
import socket
import sys
import traceback

_MACHINERY = "_kernelexec_fork_machinery"  # shell attribute: {fd: readlink target}
_CHILD_FAILED = 70
_MAX_BUFFER = 16 * 1024 * 1024
_KERNELEXEC = {}  # a template's copy of kernelexec's in-kernel code (the "load" op)


def _exit(code):
    import posix  # os._exit may be wrapped by kernelexec's hooks

    posix._exit(code)


def _open_fds():
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass  # the listing's own descriptor
    return fds


def _listen(path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(listener.fileno(), 0o600)  # Linux: the socket file is made with this mode
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(64)
    except BaseException:
        listener.close()
        raise
    listener.setblocking(False)
    return listener


def _lower_limit(name, value):
    import resource

    limit = getattr(resource, name)
    _, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(limit, (value, value))


def _join_cgroup(procs):
    """Move this process into a cgroup before it allocates anything (its memory is charged
    there from now on); the client moves it again after the fork, in case this failed. A cgroup
    that is gone was removed by a client that gave up on this kernel: it must not start."""
    try:
        with open(procs, "w") as handle:
            handle.write("0")
    except FileNotFoundError:
        raise
    except OSError:
        pass


def _check_fork_request(request):
    """The request's fields, checked; raises ValueError naming what is wrong."""
    import resource

    def need(name, kind, optional=False):
        value = request.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, kind):
            raise ValueError("fork: %r must be %s" % (name, kind.__name__))
        return value

    need("connection_file", str)
    need("stderr_path", str)
    env = need("env", dict)
    if not all(isinstance(k, str) and isinstance(v, str) and "=" not in k and k for k, v in env.items()):
        raise ValueError("fork: 'env' must map names to str values")
    cwd = need("cwd", str, optional=True)
    if cwd is not None and not os.path.isdir(cwd):
        raise ValueError("fork: cwd %r is not a directory" % cwd)
    rlimits = need("rlimits", dict, optional=True) or {}
    for name, value in rlimits.items():
        if not (name.startswith("RLIMIT_") and hasattr(resource, name) and isinstance(value, int)):
            raise ValueError("fork: bad rlimit %r: %r" % (name, value))
    for name in ("argv", "cgroups"):
        if not all(isinstance(item, str) for item in need(name, list, optional=True) or []):
            raise ValueError("fork: %r must be a list of str" % name)
    need("install", str, optional=True)


class _Server(object):
    """One process serving the protocol, blocked in poll() while idle."""

    def __init__(self, listener, path, make_app):
        self.listener, self.path, self.make_app = listener, path, make_app
        self.conns = {}  # fd -> [socket, inbuf, outbuf]
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.dispositions = {}  # what the children get back (a checkpoint's: the user's handlers)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            self.dispositions[signum] = signal.getsignal(signum)
            signal.signal(signum, lambda *_: None)  # a C handler, so the wakeup fd gets the signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def serve(self):
        """Serve until ``close`` or SIGTERM; never returns."""
        try:
            self.reap()
            while True:
                poller = select.poll()
                poller.register(self.listener.fileno(), select.POLLIN)
                poller.register(self.wake_r, select.POLLIN)
                for fd, (_, _, out) in self.conns.items():
                    poller.register(fd, select.POLLIN | (select.POLLOUT if out else 0))
                for fd, events in poller.poll():
                    if fd == self.listener.fileno():
                        self.accept()
                    elif fd == self.wake_r:
                        self.on_signals()
                    elif fd in self.conns:
                        if events & select.POLLOUT:
                            self.send(fd)
                        if events & (select.POLLIN | select.POLLHUP | select.POLLERR) and fd in self.conns:
                            self.receive(fd)
        except BaseException:
            os.write(2, traceback.format_exc().encode("utf-8", "replace"))
            self.close(1)

    def accept(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.setblocking(False)
        self.conns[conn.fileno()] = [conn, bytearray(), bytearray()]

    def drop(self, fd):
        self.conns.pop(fd)[0].close()

    def receive(self, fd):
        conn, inbuf, _ = self.conns[fd]
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or len(inbuf) + len(data) > _MAX_BUFFER:
            self.drop(fd)
            return
        inbuf += data
        while fd in self.conns and b"\n" in inbuf:
            line, _, rest = bytes(inbuf).partition(b"\n")
            inbuf[:] = rest
            if line.strip():
                self.push(fd, self.handle(fd, line))

    def push(self, fd, message):
        self.conns[fd][2] += (json.dumps(message) + "\n").encode("utf-8")
        self.send(fd)

    def send(self, fd):
        conn, _, out = self.conns[fd]
        try:
            del out[: conn.send(out)]
        except BlockingIOError:
            pass
        except OSError:
            self.drop(fd)
            return
        if len(out) > _MAX_BUFFER:  # a client that reads nothing must not stall the others
            self.drop(fd)

    def broadcast(self, message):
        for fd in list(self.conns):
            self.push(fd, message)

    def handle(self, fd, line):
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as error:
            return {"ok": False, "error": "bad request: %s" % error}
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "fork":
            return self.fork(request)
        if op == "load":
            return self.load(request)
        if op == "close":
            self.conns[fd][2] += b'{"ok": true}\n'
            self.close(0)
        return {"ok": False, "error": "unknown op %r" % (op,)}

    def load(self, request):
        """Compile kernelexec's in-kernel code once, here: every child shares it, and installs it
        without the client sending it (``{"op": "load", "source"}``, before forking)."""
        import gc

        reply = {"id": request.get("id")}
        try:
            namespace = {"__name__": "__kernelexec__"}
            exec(compile(request["source"], "<kernelexec>", "exec"), namespace)
        except Exception:
            return dict(reply, ok=False, error=traceback.format_exc())
        _KERNELEXEC.clear()
        _KERNELEXEC.update(namespace)
        gc.collect()
        gc.freeze()
        return dict(reply, ok=True)

    def fork(self, request):
        reply = {"id": request.get("id")}
        try:
            _check_fork_request(request)
            stderr_fd = os.open(request["stderr_path"], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except (ValueError, OSError) as error:
            return dict(reply, ok=False, error=str(error))
        ready_r, ready_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as error:
            for fd in (ready_r, ready_w, stderr_fd):
                os.close(fd)
            return dict(reply, ok=False, error="fork failed: %s" % error)
        if pid == 0:
            os.close(ready_r)
            self.child(request, stderr_fd, ready_w)
        os.close(ready_w)
        os.close(stderr_fd)
        os.read(ready_r, 1)  # the child has its own process group: the client may signal it
        os.close(ready_r)
        return dict(reply, ok=True, pid=pid)

    def child(self, request, stderr_fd, ready_w):
        """Become a kernel as ``request`` says; never returns."""
        code = _CHILD_FAILED
        try:
            os.setsid()
            for procs in request.get("cgroups") or ():
                _join_cgroup(procs)
            os.write(ready_w, b".")
            os.close(ready_w)
            signal.set_wakeup_fd(-1)
            for signum, disposition in self.dispositions.items():
                signal.signal(signum, signal.SIG_DFL if disposition is None else disposition)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.environ.clear()
            os.environ.update(request["env"])
            os.environ.pop("JPY_PARENT_PID", None)  # the client watches its kernels itself
            if request.get("cwd") is not None:
                os.chdir(request["cwd"])
            for name, value in (request.get("rlimits") or {}).items():
                _lower_limit(name, value)
            null = os.open(os.devnull, os.O_RDWR)
            for fd, target in ((0, null), (1, null), (2, stderr_fd)):
                os.dup2(target, fd)
            os.close(null)
            os.close(stderr_fd)
            self.listener.close()
            for conn, _, _ in self.conns.values():
                conn.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            app = self.make_app(request)
            code = 1
            _run(app)
            code = 0
        except BaseException:
            try:
                os.write(2, traceback.format_exc().encode("utf-8", "replace"))
            except BaseException:
                pass
        finally:
            _exit(code)

    def on_signals(self):
        received = b""
        try:
            while True:
                chunk = os.read(self.wake_r, 4096)
                if not chunk:
                    break
                received += chunk
        except BlockingIOError:
            pass
        self.reap()
        if signal.SIGTERM in received:
            self.close(0)

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            self.broadcast({"event": "exited", "pid": pid, "returncode": code})

    def close(self, code):
        """Send what is pending (briefly), unlink the socket path and exit."""
        for conn, _, out in list(self.conns.values()):
            try:
                conn.settimeout(1)
                conn.sendall(out)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except OSError:
            pass
        _exit(code)


def _run(app):
    """Run the kernel until it is shut down, then exit as a Python process would."""
    import atexit
    import threading

    app.start()
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()  # waits for non-daemon threads, as interpreter exit does
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _note(shell, fds):
    setattr(shell, _MACHINERY, dict((fd, target) for fd, target in fds.items() if fd > 2))


def note_machinery_fds():
    """Record the kernel's machinery fds (once, right after the kernel is ready; idempotent)."""
    from IPython import get_ipython

    shell = get_ipython()
    if getattr(shell, _MACHINERY, None) is None:
        _note(shell, _open_fds())


# The template --------------------------------------------------------------------------------

_KERNEL_MODULES = (
    "asyncio", "sqlite3", "ctypes", "IPython", "IPython.core.interactiveshell",
    "IPython.core.completer", "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell",
    "ipykernel.comm", "ipykernel.debugger", "ipykernel.eventloops", "ipykernel.displayhook",
    "jupyter_client.session", "zmq", "zmq.eventloop.zmqstream", "tornado.ioloop",
    "traitlets.config", "comm", "jedi", "matplotlib_inline.backend_inline",
)


def serve_template(path):
    """Serve at ``path`` as a template: its fork children become fresh kernels."""
    import gc
    import importlib

    listener = _listen(path)
    _become_subreaper()
    for name in _KERNEL_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # optional ones (jedi, debugpy, matplotlib_inline) may be missing
            pass
    gc.collect()
    gc.freeze()  # the kernels' collectors leave the template's pages shared
    _Server(listener, path, _fresh_app).serve()


def _become_subreaper():
    """Orphaned descendants of the template's kernels are reparented to it (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _fresh_app(request):
    """A new kernel, as ``python -m ipykernel_launcher -f connection_file *argv`` makes it."""
    from ipykernel.kernelapp import IPKernelApp

    connection_file, argv = request["connection_file"], list(request.get("argv") or [])
    _set_argv(connection_file, argv)
    before = _open_fds()
    app = IPKernelApp.instance()
    app.parent_handle = 0  # its default was read from the template's environment
    app.initialize(["-f", connection_file] + argv)
    _note(app.shell, _new_fds(before))
    app.shell._kernelexec_fork = globals()  # this code, for checkpoints of the kernel
    if request.get("install"):
        _install_soon(_KERNELEXEC, request["install"])
    return app


def _install_soon(namespace, call):
    """Run ``call`` (kernelexec's ``install(...)``) in ``namespace`` as the kernel's loop starts,
    before it handles any request; a kernel it fails in exits (the client reports its stderr)."""
    import asyncio

    def install():
        try:
            if "install" not in namespace:
                raise RuntimeError("kernelexec's in-kernel code is not loaded here")
            exec(call, namespace)
        except BaseException:
            os.write(2, ("kernelexec's in-kernel setup failed:\n" + traceback.format_exc()).encode("utf-8", "replace"))
            _exit(_CHILD_FAILED)

    asyncio.get_event_loop().call_soon(install)


def _set_argv(connection_file, argv):
    """``sys.argv`` as ``python -m ipykernel_launcher`` would have it."""
    import importlib.util

    launcher = importlib.util.find_spec("ipykernel_launcher")
    sys.argv = [launcher.origin if launcher else "ipykernel_launcher", "-f", connection_file] + argv


def _new_fds(before):
    return dict(item for item in _open_fds().items() if before.get(item[0]) != item[1])
