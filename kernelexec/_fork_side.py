"""Checkpoints: a frozen copy of a live kernel, whose fork children become kernels with its state.

Shipped after ``_fork_server``'s source, as one text (names such as ``_Server``, ``_listen``,
``_open_fds``, ``_note``, ``_exit``, ``_install_soon``, ``_MACHINERY`` come from there). A live kernel runs
``checkpoint(path)`` in a cell: a grandchild of the kernel (double fork: the kernel holds no
zombie) serves the protocol at ``path``; each ``fork`` it gets makes a child that builds new kernel
machinery around the existing IPython shell (namespace, imports, magics, formatters, execution
count, history) and serves the client's connection file.

Why a copy is correct by construction:

- Threads. The checkpoint forks from the kernel's main thread, inside a cell. A fork child has
  only that thread: the kernel's IOPub, heartbeat, control, shell-channel, history and fd-reader
  threads, libzmq's I/O threads, and the user's threads (reported by name) do not exist in it.
  The copy never calls into an object those threads used. The old app, kernel, ZMQ contexts and
  sockets, loops and streams are kept alive forever (``_GRAVEYARD``), so no finaliser of theirs
  ever runs (pyzmq would close nothing anyway: it checks the pid). Every path to them is
  re-pointed: the singletons are cleared; ``sys.std*`` are fresh objects; the old stream objects,
  which user code may hold, forward every attribute to the new streams; ``shell.kernel`` is the
  new kernel; the cell's traps and input forwarding are undone; atexit is emptied. The copy
  builds all-new machinery (ZMQ context, threads, asyncio loop) around the one object it keeps,
  the shell, which is plain Python data of the main thread.
- Locks. The copy uses no old lock: the objects that own them are never used. Still, across the
  fork the main thread holds every lock that another thread may hold on something a copy's
  image contains (kernelexec's fd forwarders, the streams' buffers, the IOPub event pipes, a
  history saver's caches), so that image is consistent; CPython re-initialises its own (GIL,
  import lock, threading, logging) in the child. The locks nest in that order everywhere.
- File descriptors. The checkpoint replaces every fd of the kernel's machinery by /dev/null
  (``dup2``, so its number is never reused: a stale object that still used one would reach
  /dev/null, never a descriptor of the new kernel). Machinery = what was open when the kernel was
  ready (``note_machinery_fds``; same target now) plus what the machinery opened later: eventfds
  and epolls (ZMQ mailboxes, loops) and connections to the kernel's own endpoints. A copy
  therefore holds no connection of its source (the source's client still sees the source die)
  and cannot read the source's output pipes; files, pipes and sockets the user opened stay open
  (fork semantics). Fds 0-2 are the copy's own (/dev/null and its stderr file).
- Memory. ``gc.freeze()`` before the fork: no collector writes to the inherited objects, so their
  pages stay shared until the code itself writes to them.
- The cell. A copy never returns from the checkpoint's cell: the frames below are dead weight,
  and the recursion limit (and the soft fd limit, for the /dev/null placeholders) grows by as
  much, so user code keeps the headroom it had. A copy ends with ``os._exit``.
"""

import json
import os
import signal
import sys

_GRAVEYARD = []  # the old machinery of a rebuilt kernel: referenced forever, never finalised
_DEPTH = "_kernelexec_fork_depth"  # shell attribute: stack depth already compensated
_LATE_KINDS = ("anon_inode:[eventfd]", "anon_inode:[eventpoll]")


def checkpoint(path):
    """Make a frozen copy of this kernel serving the protocol at ``path``.

    Runs in a cell (the kernel's main thread). Writes ``{"pid": <server pid>, "threads": [...]}``
    on stdout, alone on its line (other threads may print in the same cell: the client takes the
    last line that is a JSON object with a "pid"), and returns it; ``threads`` names the threads
    that will not exist in copies.
    """
    from IPython import get_ipython
    from ipykernel.kernelapp import IPKernelApp

    shell, app = get_ipython(), IPKernelApp.instance()
    machinery = _machinery(shell, app)
    threads = _user_threads(shell, app)
    listener = _listen(path)
    interrupted = []  # an interrupt now would leave a server nobody knows: it waits till the end
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    pid = None
    try:
        serve = lambda report: _serve_checkpoint(listener, path, machinery, report)
        pid = _double_fork(serve, _fork_locks(shell, app))
    finally:
        signal.signal(signal.SIGINT, previous)
        listener.close()
        if pid is None or interrupted:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            try:
                os.unlink(path)
            except OSError:
                pass
    if interrupted:
        raise KeyboardInterrupt
    result = {"pid": pid, "threads": threads}
    # One write, so that a line another thread prints meanwhile never splits or prefixes it.
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return result


def _machinery(shell, app):
    """The fds a copy must not keep: see the module docstring."""
    noted = getattr(shell, _MACHINERY, None)
    if noted is None:
        raise RuntimeError("note_machinery_fds() was not called when this kernel became ready")
    endpoints = _endpoints(app)
    machinery = set()
    for fd, target in _open_fds().items():
        if fd <= 2:
            continue
        if noted.get(fd) == target or target in _LATE_KINDS:
            machinery.add(fd)
        elif target.startswith("socket:[") and _local_address(fd) in endpoints:
            machinery.add(fd)
    return machinery


def _endpoints(app):
    """The kernel's own endpoints, as ``_local_address`` gives them for a connection a client made
    to one later: the port for tcp, the path for ipc."""
    ports = set(getattr(app, "_ports", {}).values())
    ports.add(getattr(app.iopub_thread, "_pipe_port", None))
    ports.discard(None)
    if getattr(app, "transport", "tcp") == "ipc":
        return set("%s-%s" % (app.ip, port) for port in ports)
    return ports


def _local_address(fd):
    """The local port (tcp) or path (unix) of the socket ``fd``, or None.
    (Looked up per socket: reading /proc/net/tcp takes milliseconds on a busy machine.)"""
    import socket

    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        address = sock.getsockname()
    except OSError:
        return None
    finally:
        sock.close()
    if isinstance(address, bytes):
        address = address.decode("utf-8", "surrogateescape")
    return address[1] if isinstance(address, tuple) else address


def _kernel_threads(shell, app):
    import threading

    try:
        from ipykernel.thread import BaseThread  # control, shell channel, subshells (ipykernel 7)
    except ImportError:
        BaseThread = ()
    own = [threading.main_thread(), app.heartbeat, app.poller, app.iopub_thread.thread]
    own += [getattr(app, name, None) for name in ("control_thread", "shell_channel_thread")]
    own.append(getattr(getattr(shell, "history_manager", None), "save_thread", None))
    own += [getattr(stream, "watch_fd_thread", None) for stream in (sys.stdout, sys.stderr)]
    return [
        t for t in threading.enumerate()
        if any(t is o for o in own) or isinstance(t, BaseThread) or t.name.startswith("kernelexec-")
    ]  # kernelexec's own threads (fd readers, interrupt delivery) are re-made by install()


def _user_threads(shell, app):
    import threading

    own = _kernel_threads(shell, app)
    return [t.name for t in threading.enumerate() if t.is_alive() and not any(t is o for o in own)]


def _fork_locks(shell, app):
    """The locks other threads may hold on what a copy can reach, in the order they nest."""
    locks = []
    for stream in (sys.stdout, sys.stderr):
        forwarder = getattr(stream, "_kernelexec_forwarder", None)
        if forwarder is None:  # kernelexec's reader thread runs forwarder._read_forever
            target = getattr(getattr(stream, "watch_fd_thread", None), "_target", None)
            forwarder = getattr(target, "__self__", None)
        if hasattr(forwarder, "_lock") and hasattr(forwarder, "drain"):
            locks.append(("kernelexec's %s forwarder" % stream.name, forwarder._lock))
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "_buffer_lock"):
            locks.append(("the %s buffer" % stream.name, stream._buffer_lock))
    if hasattr(app.iopub_thread, "_event_pipe_gc_lock"):
        locks.append(("the IOPub event pipes", app.iopub_thread._event_pipe_gc_lock))
    history = getattr(shell, "history_manager", None)
    if getattr(history, "save_thread", None) is not None:
        locks.append(("the history input cache", history.db_input_cache_lock))
        locks.append(("the history output cache", history.db_output_cache_lock))
    return locks


def _double_fork(serve, locks):
    """Start ``serve(report)`` in a grandchild (the kernel never holds a zombie), which calls
    ``report()`` once it serves; its pid."""
    import gc
    import warnings

    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    held = _acquire(locks)
    read_pid, write_pid = os.pipe()
    middle = -1
    gc.freeze()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            middle = os.fork()
        if middle == 0:
            try:
                if os.fork() == 0:
                    os.close(read_pid)
                    for lock in held:
                        lock.release()

                    def report():
                        os.write(write_pid, str(os.getpid()).encode())
                        os.close(write_pid)

                    serve(report)
            finally:
                _exit(0)
    finally:
        if middle != 0:  # the kernel
            gc.unfreeze()
            for lock in reversed(held):
                lock.release()
            os.close(write_pid)
            if middle < 0:
                os.close(read_pid)
    os.waitpid(middle, 0)
    with os.fdopen(read_pid, "rb") as pipe:
        pid = pipe.read()
    if not pid:
        raise RuntimeError("checkpoint: the server could not start (see the kernel's stderr)")
    return int(pid)


def _acquire(locks):
    held = []
    for name, lock in locks:
        if not lock.acquire(timeout=10):
            for taken in reversed(held):
                taken.release()
            raise RuntimeError("checkpoint: %s stayed locked by another thread for 10 s" % name)
        held.append(lock)
    return held


def _serve_checkpoint(listener, path, machinery, report):
    """In the frozen copy: drop the kernel's machinery fds and serve; never returns."""
    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        stderr = getattr(sys.stderr, "_original_stdstream_copy", None)  # the kernel's stderr file
        for fd, target in ((0, null), (1, null), (2, stderr if isinstance(stderr, int) else null)):
            os.dup2(target, fd)
        for fd in machinery - set([listener.fileno(), null]):
            os.dup2(null, fd, inheritable=False)
        os.close(null)
        server = _Server(listener, path, lambda request: _rebuilt_app(request, len(machinery)))
        report()
        server.serve()
    finally:
        _exit(1)


def _rebuilt_app(request, placeholders):
    """In a fork child of a checkpoint: new kernel machinery around the existing shell, with
    kernelexec's hooks installed again if the request says how.
    ``placeholders``: how many fds the checkpoint holds on /dev/null (the user keeps as many)."""
    import asyncio

    from ipykernel.kernelapp import IPKernelApp

    connection_file, argv = request["connection_file"], list(request.get("argv") or [])
    old_app = IPKernelApp.instance()
    shell, old_streams = old_app.shell, (sys.stdout, sys.stderr)
    _retire(old_app)
    before = _open_fds()
    asyncio.set_event_loop(asyncio.new_event_loop())
    _private_history(shell)
    _forget_kernelexec_hooks(shell)
    _keep_headroom(shell, placeholders)
    app = IPKernelApp.instance()
    app.parent_handle = 0
    # The shell's state is the source's: no startup files, exec_lines, extensions or pylab again.
    app.init_code = app.init_extensions = lambda: None
    app.init_gui_pylab = lambda: os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    _set_argv(connection_file, argv)
    app.initialize(["-f", connection_file] + argv)
    shell.kernel = shell.parent = app.kernel  # IPythonKernel found the shell made
    shell.exit_now = False
    data_pub = shell.__dict__.get("_data_pub")
    if data_pub is not None:
        data_pub.session, data_pub.pub_socket = shell.display_pub.session, shell.display_pub.pub_socket
    for old, new in zip(old_streams, (sys.stdout, sys.stderr)):
        _forward(old, new)
    _note(shell, _new_fds(before))
    if request.get("install"):  # with the source's compiled code (install() keeps it on the shell)
        _install_soon(getattr(shell, "_kernelexec_namespace", {}), request["install"])
    return app


def _retire(old_app):
    """Keep the old machinery alive but out of every path a new kernel takes; leave the cell."""
    import asyncio
    import atexit
    import logging

    _GRAVEYARD.extend([old_app, old_app.kernel, sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__])
    _GRAVEYARD.append(asyncio.events._get_running_loop())
    _leave_cell(old_app.shell, old_app.kernel)
    atexit._clear()  # the source's: its machinery, its temp files
    encoding = getattr(sys.__stdout__, "encoding", None) or "utf-8"  # fresh objects: no old locks
    sys.stdout = sys.__stdout__ = os.fdopen(1, "w", closefd=False, encoding=encoding)
    sys.stderr = sys.__stderr__ = os.fdopen(2, "w", 1, closefd=False, encoding=encoding, errors="backslashreplace")
    tornado_log = logging.getLogger("tornado")  # init_iopub adds its handler again
    _GRAVEYARD.append(list(tornado_log.handlers))
    tornado_log.handlers[:] = []
    type(old_app).clear_instance()
    type(old_app.kernel).clear_instance()
    asyncio.events._set_running_loop(None)  # the fork happened inside the old loop


def _keep_headroom(shell, placeholders):
    """The dead frames below and the fds on /dev/null must not shrink what user code may use."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    sys.setrecursionlimit(sys.getrecursionlimit() + max(0, depth - getattr(shell, _DEPTH, 0)))
    setattr(shell, _DEPTH, depth)
    _raise_soft_limit("RLIMIT_NOFILE", placeholders)


def _raise_soft_limit(name, more):
    import resource

    limit = getattr(resource, name)
    soft, hard = resource.getrlimit(limit)
    if soft != resource.RLIM_INFINITY:
        resource.setrlimit(limit, (soft + more if hard == resource.RLIM_INFINITY else min(hard, soft + more), hard))


def _leave_cell(shell, kernel):
    """Undo what the end of the checkpoint's cell would have undone."""
    try:
        kernel._restore_input()  # input() and getpass() of the old kernel
    except Exception:
        pass
    for trap in (shell.display_trap, shell.builtin_trap):
        while getattr(trap, "_nested_level", 0) > 0:
            trap.__exit__(None, None, None)
    try:
        import IPython.core.async_helpers as helpers

        _GRAVEYARD.append(getattr(helpers, "_asyncio_event_loop", None))
        helpers._asyncio_event_loop = None  # a loop of the source's (its epoll is shared)
    except (ImportError, AttributeError):
        pass


def _private_history(shell):
    """A history file is the source's: a copy keeps its history in memory only."""
    history = getattr(shell, "history_manager", None)
    if getattr(history, "save_thread", None) is None:
        return
    import sqlite3

    _GRAVEYARD.append(history.db)
    history.save_thread = None
    history.db = sqlite3.connect(":memory:")
    history.init_db()


def _forward(old, new):
    """Make the old stream object (user code may hold it) write to the new stream."""
    if old is new or not hasattr(old, "pub_thread"):
        return

    def __getattribute__(self, name):
        return getattr(new, name)

    old.__class__ = type("ForwardedStream", (type(old),), {"__getattribute__": __getattribute__, "__module__": __name__})


def _forget_kernelexec_hooks(shell):
    """Remove what kernelexec's ``install()`` put on the shell, so that it installs afresh (on the
    new streams too): by the copy itself (the fork request's ``install``), or by the client."""
    if not getattr(shell, "_kernelexec_installed", False):
        return

    def kernelexec_made(function):
        function = getattr(function, "__wrapped__", function)
        return getattr(function, "__module__", None) == "__kernelexec__"

    for callbacks in shell.events.callbacks.values():
        callbacks[:] = [c for c in callbacks if not kernelexec_made(c)]
    for publisher in (shell.display_pub, shell.displayhook):
        hooks = getattr(publisher, "_hooks", None)
        if isinstance(hooks, list):
            hooks[:] = [h for h in hooks if not kernelexec_made(h)]
        for name, value in list(vars(publisher).items()):  # methods replaced (clear_output, publish)
            if callable(value) and kernelexec_made(value):
                delattr(publisher, name)
    if kernelexec_made(os._exit):
        import posix

        os._exit = posix._exit
    shell._kernelexec_installed = False
