"""Code that runs inside the kernel, not in the client.

The session sends this module's source to every Python kernel it starts (silently, into a private
namespace, so the user's namespace is untouched) and calls :func:`install`. kernelexec need not be
installed in the kernel's environment: only the source travels, which is why this module imports
nothing from kernelexec and stays compatible with older Pythons.

What it installs:

- After a cell fails, it attaches the exception's real frames and arguments to the execute_reply
  as a payload (``source: "kernelexec.error"``). Front ends ignore payload sources they do not
  know, and the payload costs no extra round trip.
- Bounded output: big writes to stdout/stderr become a series of bounded stream messages the
  client truncates as they come; a display or result bigger than the output budget becomes a
  short note; the IOPub socket waits for a slow client instead of dropping messages; output
  written to file descriptors 1 and 2 reaches the call that wrote it; the streams get a
  ``buffer`` for code that writes bytes.
- Limits and exits: the session's memory and process limits, ``os._exit`` sending pending output
  first, and ``exit()``/``quit()`` leaving the session's kernel alone.
"""

import os
import sys
import threading
import traceback

PAYLOAD_SOURCE = "kernelexec.error"
_INTERNAL_DIRS = ()


def _internal_dirs():
    dirs = []
    for name in ("IPython", "ipykernel"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            dirs.append(os.path.dirname(module.__file__) + os.sep)
    return tuple(dirs)


def _display_filename(shell, filename):
    label = shell.compile.format_code_name(filename)
    return " ".join(label) if label else filename


def _user_frames(shell, error):
    frames = []
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename.startswith(_INTERNAL_DIRS):
            continue
        frames.append(
            [_display_filename(shell, frame.filename), frame.lineno, frame.name, frame.line or ""]
        )
    if isinstance(error, SyntaxError) and error.filename:
        line = (error.text or "").rstrip("\n")
        frames.append([_display_filename(shell, error.filename), error.lineno, "<module>", line])
    return frames


def _exception_info(error):
    info = {"args": [str(arg) for arg in getattr(error, "args", ())]}
    for attribute in ("name", "msg", "obj"):
        if hasattr(error, attribute):
            info[attribute] = str(getattr(error, attribute))
    return info


def _report_errors(shell):
    def post_run_cell(result):
        error = result.error_before_exec or result.error_in_exec
        if error is None:
            return
        try:
            payload = {
                "source": PAYLOAD_SOURCE,
                "frames": _user_frames(shell, error),
                "exc_info": _exception_info(error),
            }
        except Exception as failure:  # never let error reporting break the kernel
            payload = {"source": PAYLOAD_SOURCE, "frames": [], "exc_info": {}, "failure": repr(failure)}
        shell.payload_manager.write_payload(payload)

    shell.events.register("post_run_cell", post_run_cell)


class _BinaryStream(object):
    """``sys.stdout.buffer`` for ipykernel's text streams, which have none: bytes are decoded as
    UTF-8 (invalid bytes replaced), so code that writes bytes works as it does in a terminal."""

    def __init__(self, stream):
        import codecs

        self._stream = stream
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data):
        self._stream.write(self._decoder.decode(bytes(data)))
        return len(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        self._stream.flush()

    def writable(self):
        return True


def _bound_iopub(streams, max_chars):
    """Set up ipykernel's I/O thread, which sends every IOPub message, for output of any size.

    - The IOPub socket waits for a slow client instead of dropping messages (``XPUB_NODROP``): a
      PUB socket drops once a subscriber's queue holds its high-water mark (1000 messages on each
      side), which a huge print split into pieces reaches in a burst, and a dropped ``idle``
      status would leave the client waiting for the rest of the call. Waiting also bounds the
      client's memory.
    - A stream message longer than ``max_chars`` goes out as several bounded ones, through a hook
      on ipykernel's public message-hook API. Hooks are per thread and stream messages are sent
      from the I/O thread, so they are registered there. (Wrapping ``write`` instead does not
      last: IPython 9 re-wraps and restores ``sys.stdout.write`` around every cell.)
    """
    import zmq

    pub_thread = streams[0].pub_thread

    def on_io_thread():
        pub_thread.socket.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            _unbounded_event_pipe(pub_thread)
        except AttributeError:  # an ipykernel without these internals: big writes stay whole
            return
        for stream in streams:
            stream.register_hook(_splitter(stream, pub_thread, max_chars))

    pub_thread.schedule(on_io_thread)
    for stream in streams:
        _pace_writes(stream, max_chars)
        if not hasattr(stream, "buffer"):
            stream.buffer = _BinaryStream(stream)


def _pace_writes(stream, max_chars):
    """Flush a stream as soon as ``max_chars`` are buffered in it, and wait for the send.

    ipykernel buffers writes and sends them every 0.2 s: code printing in a loop would pile up
    gigabytes in the kernel between two sends, and its output would reach the client seconds
    late (after the call's timeout). Flushing waits for the I/O thread, which waits for the
    client: a flood streams at the client's pace. The hook is ``_schedule_flush``, which every
    write calls, on the class: IPython 9 re-wraps and restores the instance's ``write`` around
    every cell, so ``write`` itself cannot be hooked for good.
    """
    base = type(stream)
    if not hasattr(base, "_schedule_flush") or not isinstance(getattr(stream, "_buffers", None), dict):
        return  # another ipykernel: its own pace

    class PacedStream(base):
        def _schedule_flush(self):
            with self._buffer_lock:
                buffered = sum(buffer.tell() for buffer in self._buffers.values())
            if buffered >= max_chars:
                self.flush()
            else:
                base._schedule_flush(self)

    stream.__class__ = PacedStream


def _splitter(stream, pub_thread, max_chars):
    def split(msg):
        text = msg["content"].get("text", "")
        if len(text) <= max_chars:
            return msg
        # The pieces are queued on the I/O thread like every other message, so they keep their
        # place before the reply's idle status; the last goes on as the message itself
        # (returning None would make ipykernel skip other requests' output in this flush).
        last = (len(text) - 1) // max_chars * max_chars
        for start in range(0, last, max_chars):
            content = {"name": msg["content"]["name"], "text": text[start : start + max_chars]}
            piece = stream.session.msg("stream", content, parent=msg["parent_header"])
            stream.session.send(pub_thread, piece, ident=stream.topic)
        msg["content"]["text"] = text[last:]
        return msg

    return split


def _unbounded_event_pipe(pub_thread):
    """Let the I/O thread queue any number of sends to itself.

    Sends are queued as events through a per-thread pipe whose high-water mark (1000) would make
    the I/O thread block forever on its own queue when one flush turns into more pieces than
    that. (Sending them on the socket directly instead garbled messages under load.)
    """
    import zmq

    local = pub_thread._local
    old = getattr(local, "event_pipe", None)
    pipe = pub_thread.socket.context.socket(zmq.PUSH)
    pipe.linger = 0
    pipe.sndhwm = 0  # an inproc pipe is unbounded when either side's high-water mark is 0
    pipe.connect(pub_thread._event_interface)
    local.event_pipe = pipe
    with pub_thread._event_pipe_gc_lock:
        pub_thread._event_pipes[threading.current_thread()] = pipe
    if old is not None:
        old.close()


def _wait_for_fd_output(shell, streams):
    """Let output written to file descriptors 1 and 2 reach the call that wrote it.

    ipykernel forwards such output (``os.write(1, ...)``, subprocesses, C libraries) from a pipe
    through a reader thread; when a cell ends right after writing, the reader may not have passed
    it on before the reply is sent, and the output would be reported after the call ended.
    Before the cell's results go out, wait (at most a quarter second) until each pipe is empty
    and its reader is back in ``read()`` on it, which means it has handed on all it read.
    """
    import fcntl
    import platform
    import struct
    import termios
    import time

    read_syscall = {"x86_64": "0", "aarch64": "63"}.get(platform.machine())
    watched = []
    for stream in streams:
        fid, reader = getattr(stream, "_fid", None), getattr(stream, "watch_fd_thread", None)
        if isinstance(fid, int) and reader is not None:
            watched.append((fid, getattr(reader, "native_id", None)))
    if not watched:
        return

    def pending(fid):
        try:
            return struct.unpack("i", fcntl.ioctl(fid, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def reading(fid, thread_id):
        if read_syscall is None or thread_id is None:
            return True  # cannot tell here: trust the empty pipe
        try:
            with open("/proc/self/task/%d/syscall" % thread_id) as syscall:
                fields = syscall.read().split()
        except OSError:
            return True
        return len(fields) > 1 and fields[0] == read_syscall and int(fields[1], 16) == fid

    def settled():
        return all(not pending(fid) and reading(fid, thread_id) for fid, thread_id in watched)

    def drain(*_):
        deadline = time.monotonic() + 0.25  # a writer that never stops must not slow every call
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.0005)

    shell.events.register("post_execute", drain)


def _keep_kernel_on_exit(shell):
    """IPython's ``exit()``/``quit()`` would end the kernel once the call is over, taking the
    session's state with it; in a session only the owner ends the kernel."""

    def ask_exit():
        sys.stderr.write("exit() and quit() do not end a kernelexec session; its state is kept.\n")

    shell.ask_exit = ask_exit


def _flush_output_before_hard_exit():
    """``os._exit`` skips every flush: send pending output first, so the client gets it."""
    import time

    hard_exit = os._exit
    kernel_pid = os.getpid()

    def exit_after_flushing(status):
        if os.getpid() != kernel_pid:  # a forked child: its output is not ours to wait for
            hard_exit(status)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            time.sleep(0.05)  # flush() queues the message; ZMQ's I/O thread still has to send it
        finally:
            hard_exit(status)

    os._exit = exit_after_flushing


def _lower_limit(which, value):
    """Lower a resource limit (soft and hard, so the code cannot raise it back)."""
    import resource

    limit = getattr(resource, which)
    _, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(limit, (value, value))


def _drop_huge_displays(shell, max_bundle_chars):
    """Replace a display or result bigger than the call's whole output budget by a short note.

    The client would drop it anyway, but only after receiving and decoding all of it: a 1 GB
    ``display`` or last expression must not cost the client 1 GB. The note carries how much was
    dropped (``metadata.kernelexec.dropped_bytes``), so the result still counts it.
    """

    def size(value):
        text = value if isinstance(value, str) else str(value)
        return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))

    def drop(msg):
        content = msg.get("content", {})
        data = content.get("data")
        if not isinstance(data, dict):
            return msg
        dropped = sum(size(value) for value in data.values())
        if dropped <= max_bundle_chars:
            return msg
        kinds = ", ".join(sorted(data))
        content["data"] = {"text/plain": f"[{kinds}: {dropped:,} bytes, more than max_output_bytes]"}
        content["metadata"] = {"kernelexec": {"dropped_bytes": dropped}}
        return msg

    for publisher in (shell.display_pub, shell.displayhook):
        if hasattr(publisher, "register_hook"):  # ipykernel >= 7 for the displayhook
            publisher.register_hook(drop)


def install(max_message_chars, memory_limit=None, max_processes=None, max_bundle_chars=None):
    """Install kernelexec's hooks in the running IPython kernel (idempotent)."""
    global _INTERNAL_DIRS
    from IPython import get_ipython

    shell = get_ipython()
    if memory_limit:
        _lower_limit("RLIMIT_AS", memory_limit)  # over-allocation: a clean MemoryError
    if max_processes:
        _lower_limit("RLIMIT_NPROC", max_processes)
    if getattr(shell, "_kernelexec_installed", False):
        return
    shell._kernelexec_installed = True
    _INTERNAL_DIRS = _internal_dirs()
    _report_errors(shell)
    _flush_output_before_hard_exit()
    _keep_kernel_on_exit(shell)
    _wait_for_fd_output(shell, (sys.stdout, sys.stderr))
    if max_bundle_chars:
        _drop_huge_displays(shell, max_bundle_chars)
    streams = [stream for stream in (sys.stdout, sys.stderr) if hasattr(stream, "register_hook")]
    if streams:  # ipykernel's OutStreams
        _bound_iopub(streams, max_message_chars)
