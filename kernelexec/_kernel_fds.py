"""In-kernel source, part 2 of 3 (see ``_kernel_streams``): output written to file descriptors 1
and 2 forwarded in order with the rest, and interrupts that always reach the code.
"""

import os
import threading

STDERR_KEEP_BYTES = 1024 * 1024  # the kernel's stderr file is emptied past this (set by install())


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
        import functools
        import termios

        self._stream = stream
        # Where forwarded text goes: the stream's write that does not drain (set after the
        # stream's class is replaced, see _take_over_writes).
        self.write_text = functools.partial(write, stream)
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
                    self.write_text(text)
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
    handler of ours, and the signal's wakeup fd (a pipe) wakes a thread of
    ours: a byte in the pipe is a signal the handler has not seen (the handler empties it), and
    while one is there 50 ms later, the signal is sent again to the main thread itself, which
    interrupts its system call. Signals not yet handled collapse into
    one, so the code gets one KeyboardInterrupt. A handler the code installed is left alone, and
    the handler's own frame is cut from the traceback the user sees.
    """

    RECHECK_SECONDS = 0.05
    MAX_RESENDS = 5

    def __init__(self):
        import signal

        self._signal = signal
        self._main = threading.main_thread().ident
        import socket

        # A socket pair, not a pipe: the watcher can look at what waits without taking it.
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._read_fd, self._write_fd = self._reader.fileno(), self._writer.fileno()
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
        self._drain()  # every signal that came so far is handled by this KeyboardInterrupt
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
        previous = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        # Ours still, if a request ended without end_request(): never pass bytes on to ourselves.
        self._previous_wakeup = -1 if previous == self._write_fd else previous
        self._running = True

    def end_request(self):
        self._running = False
        self._signal.set_wakeup_fd(self._previous_wakeup)
        self._drain()  # a signal the request did not raise for (a handler of the code's own)

    def _watch(self):
        """A byte in the pipe is a signal the handler has not seen yet (it empties the pipe):
        while there is one, and the code is still ours to interrupt, send the signal again."""
        import select
        import time

        signal = self._signal
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        while True:
            try:
                poller.poll()
            except OSError:
                return
            resends = 0
            while self._sigint_waiting():
                ours = signal.getsignal(signal.SIGINT) == self.on_sigint
                if not (self._running and ours) or resends >= self.MAX_RESENDS:
                    self._drain()
                    break
                time.sleep(self.RECHECK_SECONDS)
                if self._sigint_waiting():
                    signal.pthread_kill(self._main, signal.SIGINT)
                    resends += 1

    def _sigint_waiting(self):
        """Whether a SIGINT waits unseen; other signals' bytes ahead of it are passed on."""
        import socket

        try:
            waiting = self._reader.recv(512, socket.MSG_PEEK)
        except OSError:  # nothing
            return False
        others = waiting.find(bytes([self._signal.SIGINT]))
        if others == -1:
            others = len(waiting)
        if others:
            self._forward(self._reader.recv(others))
        return others < len(waiting)

    def _drain(self):
        try:
            while True:
                received = self._reader.recv(512)
                if not received:
                    return
                self._forward(received)
        except OSError:  # empty
            pass

    def _forward(self, received):
        if self._previous_wakeup != -1:  # someone else's (asyncio's): pass it on
            try:
                os.write(self._previous_wakeup, received)
            except OSError:
                pass
