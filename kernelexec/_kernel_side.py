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
  short note; the IOPub socket waits for a slow client instead of dropping messages; a flood is
  sent at the client's pace; output written to file descriptors 1 and 2 reaches the call that
  wrote it, in order with the rest of its output; the streams get a ``buffer`` for code that
  writes bytes.
- Limits and exits: the session's memory and process limits, ``os._exit`` sending pending output
  first, ``exit()``/``quit()`` leaving the session's kernel alone, and ``SystemExit`` without
  IPython's "To exit: use 'exit'..." warning.
"""

import os
import sys
import threading
import traceback

# Set by install() from the client's values (kernelexec._wire).
PAYLOAD_SOURCE = "kernelexec.error"  # the execute_reply payload that carries the real frames
STDERR_KEEP_BYTES = 1024 * 1024  # the kernel's stderr file is emptied past this many bytes
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
        if frame.filename.startswith(_INTERNAL_DIRS) or frame.filename == "<kernelexec>":
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
      from the I/O thread, so they are registered there.
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
        if not hasattr(stream, "buffer"):
            stream.buffer = _BinaryStream(stream)


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


def _take_over_writes(shell, streams, max_chars):
    """Every write to the streams keeps fd output in order and the kernel's buffer bounded.

    - Output written to file descriptors 1 and 2 (``os.write(1, ...)``, subprocesses, C
      libraries) reaches ipykernel through a pipe and a reader thread, whenever that thread gets
      to it: a ``print`` right after an ``os.write`` could come out first or split in two around
      it, and output written just before a cell ends could be reported after the call. Here the
      pipe is drained, under one lock per stream, by whoever comes first: a reader thread when
      the pipe has data, every write before its own text, and the end of every cell.
    - ipykernel buffers writes and sends them every 0.2 s: code printing in a loop would pile up
      gigabytes in the kernel between two sends, and its output would reach the client seconds
      late (after the call's timeout). Once ``max_chars`` are buffered, the stream is flushed
      and the write waits for the send, which waits for the client: a flood streams at the
      client's pace.
    """
    forwarders = []
    order = _SendOrder.for_streams(streams)
    for stream in streams:
        pacer = _Pacer.for_stream(stream, max_chars)
        forwarder = _FdForwarder.take_over(stream, pacer)
        stream.__dict__.pop("write", None)
        stream.__class__ = _stream_class(type(stream), forwarder, pacer, order)
        if order is not None:
            order.adopt(stream)
        if forwarder is not None:
            forwarder.start()
            forwarders.append(forwarder)
    if forwarders:
        shell.events.register("post_execute", lambda *_: [forwarder.drain() for forwarder in forwarders])


def _stream_class(base, forwarder, pacer, order=None):
    """``base`` with a ``write`` that drains the descriptor's pipe first and paces after, and
    buffers sent in the order ``order`` keeps.

    ``write`` is a property so that it also wraps whatever is assigned to the instance's
    ``write``: IPython 9 replaces it with a recording wrapper around every cell, then puts the
    method it found back.
    """

    def wrapping(inner):
        if forwarder is None and pacer is None:
            return inner
        if forwarder is not None:
            count_pending, pending, busy = forwarder.fast_check()

        def write(text, *args, **kwargs):
            # Almost every write finds the pipe empty and the lock free: nothing written before
            # it is on its way (the reader reads only under the lock). This check is the cost of
            # every write, so it is made of C calls only.
            if forwarder is not None:
                try:
                    count_pending()
                except OSError:
                    pass
                else:
                    if pending[0] or busy():
                        forwarder.drain()
            result = inner(text, *args, **kwargs)
            if pacer is not None:
                pacer.wrote(len(text))
            return result

        write.kernelexec_inner = inner
        return write

    def get_write(self):
        wrapped = self.__dict__.get("_kernelexec_write")
        if wrapped is None:
            wrapped = self.__dict__["_kernelexec_write"] = wrapping(base.write.__get__(self))
        return wrapped

    def set_write(self, value):
        self.__dict__["_kernelexec_write"] = wrapping(getattr(value, "kernelexec_inner", value))

    def reset_write(self):
        self.__dict__.pop("_kernelexec_write", None)

    namespace = {"write": property(get_write, set_write, reset_write), "__module__": __name__}
    if order is not None:

        def _flush_buffers(self):
            order.send_older_than(self)
            return base._flush_buffers(self)

        def _rotate_buffers(self):
            with self._buffer_lock:
                old_buffers = self._buffers
                self._buffers = order.new_buffers(self)
            return old_buffers

        namespace.update(_flush_buffers=_flush_buffers, _rotate_buffers=_rotate_buffers)
    return type("KernelexecStream", (base,), namespace)


class _SendOrder(object):
    """Sends the streams' buffers in the order their text was written.

    ipykernel buffers each stream apart and sends a buffer at an explicit flush or on a timer of
    its own, 0.2 s after its first write. The timers are never cancelled: one set before a flush
    (the end of a cell, a traceback, a display) fires later, in the middle of the next cell's
    output, and sends that stream's newer text ahead of the other stream's older text. (Right
    after a cell or a ``kernel_info_request`` that wrote to stderr, a cell that prints, writes to
    stderr and raises had its stderr first.) Here a stream about to send its buffer first has the
    other stream send its own when it holds older text, whatever started the send. Text written
    between two sends stays grouped by stream, as ipykernel sends it.
    """

    @classmethod
    def for_streams(cls, streams):
        for stream in streams:
            if not (
                isinstance(getattr(stream, "_buffers", None), dict)
                and hasattr(stream, "_buffer_lock")
                and hasattr(stream, "_flush_buffers")
                and hasattr(stream, "_rotate_buffers")
            ):
                return None  # another ipykernel: its own order
        return cls(streams)

    def __init__(self, streams):
        import itertools

        self._streams = list(streams)
        self._stamp = itertools.count().__next__  # atomic under the GIL
        self._oldest = {}  # id(stream) -> stamp of its oldest unsent text, None when there is none

    def new_buffers(self, stream):
        """Empty buffers for ``stream`` (called under its buffer lock) that stamp their first text."""
        from collections import defaultdict
        from io import StringIO

        key = id(stream)
        oldest = self._oldest
        oldest[key] = None

        def first_text_since_sent():  # called by ipykernel's write, under the buffer lock
            if oldest[key] is None:
                oldest[key] = self._stamp()
            return StringIO()

        return defaultdict(first_text_since_sent)

    def adopt(self, stream):
        """Put ``stream``'s text not sent yet in stamped buffers."""
        with stream._buffer_lock:
            buffers = self.new_buffers(stream)
            for parent, buffer in stream._buffers.items():
                if buffer.tell():
                    buffers[parent].write(buffer.getvalue())
            stream._buffers = buffers

    def send_older_than(self, stream):
        """Before ``stream`` sends its buffer, have the streams holding older text send theirs."""
        mine = self._oldest.get(id(stream))
        if mine is None:
            return
        for other in self._streams:
            theirs = self._oldest.get(id(other))
            if other is not stream and theirs is not None and theirs < mine:
                other._flush()  # on the thread sending ours, as ipykernel's _flush expects


class _Pacer(object):
    """Flushes a stream, and waits for the send, once ``max_chars`` are buffered in it."""

    @classmethod
    def for_stream(cls, stream, max_chars):
        if not isinstance(getattr(stream, "_buffers", None), dict) or not hasattr(stream, "_buffer_lock"):
            return None  # another ipykernel: its own pace
        return cls(stream, max_chars)

    def __init__(self, stream, max_chars):
        self._stream = stream
        self._max_chars = max_chars
        self._unchecked = 0  # characters written since the buffer was last measured

    def wrote(self, chars):
        """Count ``chars`` written; measure the buffer (rarely) and flush it when full."""
        self._unchecked += chars
        if self._unchecked < self._max_chars:
            return
        self._unchecked = 0
        stream = self._stream
        with stream._buffer_lock:
            buffered = sum(buffer.tell() for buffer in stream._buffers.values())
        if buffered >= self._max_chars:
            stream.flush()


class _FdForwarder(object):
    """Moves what is written to a stream's file descriptor into the stream, under a lock."""

    CHUNK = 65536

    @classmethod
    def take_over(cls, stream, pacer):
        """Stop ipykernel's reader thread of ``stream``'s pipe, to be replaced by ``start()``;
        None (ipykernel's thread kept) for a stream or platform this cannot handle."""
        try:
            import fcntl  # noqa: F401 (POSIX only)

            fid, old_reader, watching = stream._fid, stream.watch_fd_thread, stream._should_watch
            wake_fd = stream._original_stdstream_fd
            stream._original_stdstream_copy  # noqa: B018 - drain() copies to it: it must exist
        except (AttributeError, ImportError):
            return None
        if not (isinstance(fid, int) and watching and old_reader.is_alive()):
            return None
        stream._should_watch = False  # ipykernel's reader leaves after its next read:
        try:
            os.write(wake_fd, b"\0")  # what ipykernel's close() does
            old_reader.join(2)
        finally:
            stream._should_watch = True
        if old_reader.is_alive():
            return None  # still ipykernel's
        return cls(stream, fid, type(stream).write, pacer)

    def __init__(self, stream, fid, write, pacer):
        import array
        import codecs
        import fcntl
        import termios

        self._stream = stream
        self._write = write  # the stream class's own write, which does not drain
        self._pacer = pacer
        self._fid = fid
        self._lock = threading.Lock()
        self._holder = None  # the thread in drain(): a signal handler there that prints must not wait
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._copied = 0  # bytes copied to the original descriptor since it was last emptied
        self._count = array.array("i", [0])
        self._count_query = (fcntl.ioctl, termios.FIONREAD)
        self._enabled = True
        # A forked child shares the pipe but not the reader thread, which may have held the lock.
        os.register_at_fork(after_in_child=self._disable)

    def start(self):
        """Start the reader thread, where ``close()`` of the stream looks for it."""
        reader = threading.Thread(target=self._read_forever, name="kernelexec-fd-reader")
        reader.daemon = True
        self._stream.watch_fd_thread = reader
        reader.start()

    def _disable(self):
        self._enabled = False

    def fast_check(self):
        """``(count_pending, pending, busy)``: ``count_pending()`` puts the number of bytes waiting
        in the pipe in ``pending[0]``; ``busy()`` says whether someone is forwarding."""
        import array
        import functools

        ioctl, request = self._count_query
        # Shared by the writing threads: one may read the count another's query, made at about
        # the same time, put there.
        pending = array.array("i", [0])
        return functools.partial(ioctl, self._fid, request, pending, True), pending, self._lock.locked

    def pending(self):
        """How many bytes wait in the pipe."""
        ioctl, request = self._count_query
        try:
            ioctl(self._fid, request, self._count, True)
        except OSError:
            return 0
        return self._count[0]

    def drain(self):
        """Forward everything now in the pipe (and whatever the reader thread is forwarding).

        Under the lock the pipe is only read into the stream's buffer, which never waits; pacing,
        which may wait for the client, comes after. (A flush that times out prints to fd 2: if
        the reader thread waited on it holding the lock, nobody could empty the pipe.)
        """
        if not self._enabled:
            return
        me = threading.get_ident()
        if self._holder == me:
            return  # a signal handler or finaliser writing in the middle of our own drain
        forwarded = 0
        with self._lock:
            self._holder = me
            try:
                if not self._stream._should_watch:
                    return  # closed: the byte that wakes the reader must be left for it
                pending = self.pending()
                while pending > 0:
                    data = os.read(self._fid, min(pending, self.CHUNK))
                    pending -= len(data)
                    text = self._decoder.decode(data)
                    self._write(self._stream, text)
                    forwarded += len(text)
                    self._copy_to_original(data)
            finally:
                self._holder = None
        if forwarded and self._pacer is not None:
            self._pacer.wrote(forwarded)

    def _copy_to_original(self, data):
        """As ipykernel does, copy to the original descriptor: for fd 2 the kernel's stderr file,
        whose end explains a crash. Past ``STDERR_KEEP_BYTES`` it is emptied (a flood must not
        fill the disk; the shared offset goes on, so the file turns sparse)."""
        copy = self._stream._original_stdstream_copy
        try:
            os.write(copy, data)
            self._copied += len(data)
            if self._copied > STDERR_KEEP_BYTES:
                self._copied = 0
                os.ftruncate(copy, 0)
        except OSError:  # /dev/null for stdout cannot be truncated, nor a closed descriptor written
            pass

    def _read_forever(self):
        import select

        poller = select.poll()
        poller.register(self._fid, select.POLLIN)
        try:
            while True:
                events = poller.poll()
                if not self._stream._should_watch:  # closed: close() wrote a byte to wake us
                    return
                if any(event & (select.POLLHUP | select.POLLERR) for _, event in events):
                    if not self.pending():
                        return
                self.drain()
        except (OSError, ValueError):  # the stream or its pipe was closed under us
            return


class _InterruptDelivery(object):
    """Every interrupt reaches the code, even one that lands just before a blocking call.

    A SIGINT sets a flag that Python checks between bytecodes; one that arrives after the last
    check but before a blocking system call starts (``time.sleep``, a read) does not interrupt the
    call, and the KeyboardInterrupt comes only when the call returns, seconds later (seen in 5 of
    150 early interrupts on a loaded machine). While a request runs, SIGINT is handled by a
    handler that counts the interrupts it raises, and the signal's wakeup fd wakes a thread of
    ours: if the handler has not run 50 ms after the signal came, the signal is sent again to the
    main thread itself, which interrupts its system call. Signals not yet handled collapse into
    one, so the code gets one KeyboardInterrupt. A handler the code installed is left alone, and
    the handler's own frame is cut from the traceback the user sees.
    """

    RECHECK_SECONDS = 0.05
    MAX_RESENDS = 5

    def __init__(self):
        import signal
        import time

        self._signal = signal
        self._clock = time.monotonic
        self._main = threading.main_thread().ident
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        # When the handler last raised, and when the watcher last saw an interrupt through: a
        # signal that woke the watcher came after the latter, so it was handled if the former is
        # later still (also when the watcher wakes only after its request ended).
        self._raised_at = 0.0
        self._settled_at = 0.0
        self._running = False
        self._previous_wakeup = -1

    @classmethod
    def install(cls, shell):
        import signal

        kernel = getattr(shell, "kernel", None)
        if not (hasattr(signal, "pthread_kill") and hasattr(kernel, "pre_handler_hook")):
            return None
        delivery = cls()
        pre, post = kernel.pre_handler_hook, kernel.post_handler_hook

        def pre_handler_hook():
            pre()
            delivery.start_request()

        def post_handler_hook():
            delivery.end_request()
            post()

        kernel.pre_handler_hook, kernel.post_handler_hook = pre_handler_hook, post_handler_hook
        get_exc_info = shell._get_exc_info

        def exc_info_without_our_frame(exc_tuple=None):
            etype, value, tb = get_exc_info(exc_tuple)
            if isinstance(value, KeyboardInterrupt):
                delivery.cut_own_frame(tb)
            return etype, value, tb

        shell._get_exc_info = exc_info_without_our_frame
        watcher = threading.Thread(target=delivery._watch, name="kernelexec-interrupts", daemon=True)
        watcher.start()
        return delivery

    def on_sigint(self, signum, frame):
        self._raised_at = self._clock()
        raise KeyboardInterrupt

    def cut_own_frame(self, tb):
        previous = None
        while tb is not None and tb.tb_next is not None:
            previous, tb = tb, tb.tb_next
        if previous is not None and tb.tb_frame.f_code is self.on_sigint.__code__:
            previous.tb_next = None

    def start_request(self):
        signal = self._signal
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # ipykernel's, for the request
            signal.signal(signal.SIGINT, self.on_sigint)
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._running = True

    def end_request(self):
        self._running = False
        self._signal.set_wakeup_fd(self._previous_wakeup)

    def _watch(self):
        import time

        signal = self._signal
        while True:
            try:
                received = os.read(self._read_fd, 512)
            except OSError:
                return
            if self._previous_wakeup != -1:  # it was someone else's (asyncio's): pass it on
                try:
                    os.write(self._previous_wakeup, received)
                except OSError:
                    pass
            if signal.SIGINT not in received:
                continue
            for _ in range(self.MAX_RESENDS):
                if self._handled():  # (also before we woke up: it is usually at once)
                    break
                time.sleep(self.RECHECK_SECONDS)
                if self._handled() or signal.getsignal(signal.SIGINT) != self.on_sigint:
                    break  # handled, over, or the code handles SIGINT its own way
                signal.pthread_kill(self._main, signal.SIGINT)
            self._discard_own_wakeups()
            self._settled_at = self._clock()

    def _handled(self):
        return self._raised_at > self._settled_at or not self._running

    def _discard_own_wakeups(self):
        """The signals sent again wrote wakeup bytes too; they are not new interrupts."""
        os.set_blocking(self._read_fd, False)
        try:
            while os.read(self._read_fd, 512):
                pass
        except OSError:  # empty
            pass
        finally:
            os.set_blocking(self._read_fd, True)


def _keep_kernel_on_exit(shell):
    """IPython's ``exit()``/``quit()`` would end the kernel once the call is over, taking the
    session's state with it; in a session only the owner ends the kernel."""

    def ask_exit():
        sys.stderr.write("exit() and quit() do not end a kernelexec session; its state is kept.\n")

    shell.ask_exit = ask_exit


def _quiet_system_exit():
    """IPython follows a ``SystemExit`` with ``UserWarning: To exit: use 'exit', 'quit', or
    Ctrl-D.``, advice for a terminal user; in a session the error output says it all."""
    import warnings

    warnings.filterwarnings(
        "ignore", message="To exit: use 'exit', 'quit', or Ctrl-D", category=UserWarning
    )


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


def _refuse_a_limit_below_use(memory_limit):
    """An address-space limit below what the kernel maps already kills or hangs it: say so."""
    try:
        with open("/proc/self/status") as status:
            in_use = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return
    if memory_limit <= in_use:
        raise MemoryError(f"the kernel already maps {in_use / 2**20:.0f} MiB of address space")


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


def _open_fds():
    fds = {}
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            fds[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass
    return fds


def _note_machinery_fds(shell, before):
    """Record the kernel's own fds, which copies made by fork close (see ``_fork_side``): all
    of them when the kernel is new (no user code has run), else those this install opened."""
    machinery = getattr(shell, "_kernelexec_fork_machinery", None)
    now = dict((fd, target) for fd, target in _open_fds().items() if fd > 2)
    if machinery is None:
        shell._kernelexec_fork_machinery = now
    else:
        machinery.update((fd, target) for fd, target in now.items() if before.get(fd) != target)


def install(
    max_message_chars, memory_limit=None, max_processes=None, max_bundle_chars=None,
    payload_source=PAYLOAD_SOURCE, stderr_keep_bytes=STDERR_KEEP_BYTES,
):
    """Install kernelexec's hooks in the running IPython kernel (idempotent)."""
    global _INTERNAL_DIRS, PAYLOAD_SOURCE, STDERR_KEEP_BYTES
    from IPython import get_ipython

    PAYLOAD_SOURCE, STDERR_KEEP_BYTES = payload_source, stderr_keep_bytes

    shell = get_ipython()
    fds_before = _open_fds()
    if memory_limit:
        _refuse_a_limit_below_use(memory_limit)
        _lower_limit("RLIMIT_AS", memory_limit)  # over-allocation: a clean MemoryError
    if max_processes:
        _lower_limit("RLIMIT_NPROC", max_processes)
    if getattr(shell, "_kernelexec_installed", False):
        return
    shell._kernelexec_installed = True
    _INTERNAL_DIRS = _internal_dirs()
    _report_errors(shell)
    _InterruptDelivery.install(shell)
    _flush_output_before_hard_exit()
    _keep_kernel_on_exit(shell)
    _quiet_system_exit()
    if max_bundle_chars:
        _drop_huge_displays(shell, max_bundle_chars)
    streams = [stream for stream in (sys.stdout, sys.stderr) if hasattr(stream, "register_hook")]
    if streams:  # ipykernel's OutStreams
        _bound_iopub(streams, max_message_chars)
        _take_over_writes(shell, streams, max_message_chars)
    _note_machinery_fds(shell, fds_before)
