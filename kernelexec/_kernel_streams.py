"""In-kernel source, part 1 of 3 (shipped with ``_kernel_fds`` and ``_kernel_side``, which
defines ``install``): kernelexec's stream machinery inside ipykernel's ``OutStream``s.

Bounded stream messages, the IOPub socket waiting for a slow client, a flood sent at the
client's pace, and stdout and stderr sent in the order they were written. See ``_kernel_side``
for how the source travels and why it imports nothing from kernelexec.
"""

import functools
import os
import threading


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
    - A call that asks for it has its output bounded in the kernel (``_OutputBound``).
    - Otherwise ipykernel buffers writes and sends them every 0.2 s: code printing in a loop
      would pile up gigabytes in the kernel between two sends, and its output would reach the
      client seconds late (after the call's timeout). Once ``max_chars`` are buffered, the
      stream is flushed and the write waits for the send, which waits for the client: a flood
      streams at the client's pace.
    """
    forwarders = []
    order = _SendOrder.for_streams(streams)
    bound = None
    if order is not None and all(hasattr(stream, "_parent_header_global") for stream in streams):
        bound = _OutputBound(shell, streams)  # ipykernel >= 6.29's internals
    for index, stream in enumerate(streams):
        pacer = _Pacer.for_stream(stream, max_chars)
        forwarder = _FdForwarder.take_over(stream, pacer)
        stream.__dict__.pop("write", None)
        stream.__class__ = _stream_class(type(stream), forwarder, pacer, order, bound, index)
        stream._kernelexec_install_write()
        if order is not None:
            order.adopt(stream)
        if forwarder is not None:
            forwarder.write_text = functools.partial(stream._kernelexec_put, pace=False)  # drain() paces
            forwarder.start()
            forwarders.append(forwarder)
    if forwarders:
        shell.events.register("post_execute", lambda *_: [forwarder.drain() for forwarder in forwarders])
    if bound is not None:
        shell.events.register("post_execute", bound.end_call)
        bound.order = order
        bound.drain_fds = (lambda: [forwarder.drain() for forwarder in forwarders]) if forwarders else None


def _stream_class(base, forwarder, pacer, order=None, bound=None, index=0):
    """``base`` with a ``write`` that drains the descriptor's pipe first, then keeps the text
    in the call's bound or paces after, and buffers sent in the order ``order`` keeps.

    The ``write`` a stream's users see is a closure in the instance's ``__dict__`` (so ``print``
    finds it without a Python-level descriptor call: this is the cost of every write), made by
    ``install_write``. Whatever is assigned to the instance's ``write`` is wrapped the same way:
    IPython 9 replaces it with a recording wrapper around every cell, then puts the method it
    found back. Only ipykernel's own write is bounded (a recording wrapper must see every write).
    """
    base_write = base.write

    def put(self, text, inner=None, pace=True):
        """Keep ``text`` in the call's bound, or hand it to ipykernel's write (``inner``)."""
        call = bound.call if bound is not None else None
        # The bound takes the call's own text (not a thread's with another parent, as
        # ipykernel's parent_header property finds it) while its spill file can be written.
        if (
            call is not None
            and type(text) is str
            and self._parent_header.get(self._parent_header_global) is call.parents[index]
            and not call.off
        ):
            call.write(index, text, order, self)
            if not self._flush_pending:
                _schedule_bound_flush(self, call, index)
            return len(text)
        result = (inner or base_write.__get__(self))(text)
        if pace and pacer is not None and type(text) is str:
            pacer.wrote(len(text))
        return result

    def wrapping(inner, stream):
        direct = getattr(inner, "__func__", None) is base_write
        if forwarder is None and pacer is None and bound is None:
            return inner
        if forwarder is not None:
            count_pending, pending, busy = forwarder.fast_check()
            drain = forwarder.drain
        else:
            count_pending, pending, busy, drain = None, None, None, None

        def keep_fd_order():
            # Almost every write finds the pipe empty and the lock free: nothing written before
            # it is on its way (the reader reads only under the lock). This check is the cost of
            # every write, so it is made of C calls only.
            try:
                count_pending()
            except OSError:
                pass
            else:
                if pending[0] or busy():
                    drain()

        if direct and bound is not None:  # ipykernel's own: the common case, kept lean
            parent_var = stream._parent_header  # a ContextVar, made once

            def write(text):
                if count_pending is not None:
                    try:  # keep_fd_order(), inlined
                        count_pending()
                    except OSError:
                        pass
                    else:
                        if pending[0] or busy():
                            drain()
                call = bound.call
                if (
                    call is not None
                    and type(text) is str
                    and parent_var.get(stream._parent_header_global) is call.parents[index]
                    and not call.off
                ):  # put(), inlined
                    call.write(index, text, order, stream)
                    if not stream._flush_pending:
                        _schedule_bound_flush(stream, call, index)
                    return len(text)
                return put(stream, text, inner)

        elif direct and forwarder is not None:

            def write(text):
                try:  # keep_fd_order(), inlined
                    count_pending()
                except OSError:
                    pass
                else:
                    if pending[0] or busy():
                        drain()
                return put(stream, text, inner)

        elif direct:
            write = functools.partial(put, stream, inner=inner)

        else:

            def write(text, *args, **kwargs):
                if forwarder is not None:
                    keep_fd_order()
                result = inner(text, *args, **kwargs)
                if pacer is not None:
                    pacer.wrote(len(text))
                return result

        write.kernelexec_inner = inner
        return write

    def install_write(self, value=None):
        """Make the instance's ``write`` wrap ``value`` (ipykernel's own write when None)."""
        inner = base_write.__get__(self) if value is None else getattr(value, "kernelexec_inner", value)
        self.__dict__["write"] = wrapping(inner, self)

    def __setattr__(self, name, value):
        if name == "write":
            install_write(self, value)
        else:
            base.__setattr__(self, name, value)

    def __delattr__(self, name):
        if name == "write":
            install_write(self)
        else:
            base.__delattr__(self, name)

    namespace = {
        "__setattr__": __setattr__,
        "__delattr__": __delattr__,
        "_kernelexec_install_write": install_write,
        "_kernelexec_put": put,
        "__module__": __name__,
    }
    if order is not None:

        def _flush_buffers(self):
            order.sending(self, 1)
            try:
                yield from _take_and_send(self)
            finally:  # after ipykernel queued the last piece of what was taken (see holds_nothing)
                order.sending(self, -1)

        def _take_and_send(self):
            order.send_older_than(self)
            call = bound.call if bound is not None else None
            if call is not None and call.stale:  # its text goes first, then the clear kept back
                for stream in bound.streams:
                    order.sending(stream, 1)
                try:
                    for stale_index, stale_taken in call.take_stale():
                        bound.streams[stale_index]._kernelexec_send_taken(call, stale_taken)
                finally:
                    for stream in bound.streams:
                        order.sending(stream, -1)
            taken, owed_clear = None, False
            if call is not None:
                with call.lock:  # the lock writes hold first, then the buffer lock
                    old_buffers = self._rotate_buffers()
                    taken = call.take(index)
                    owed_clear, call.owed_clear = call.owed_clear, False
            else:
                old_buffers = self._rotate_buffers()
            if owed_clear:  # before the call's text taken with it, queued as sends are
                self._kernelexec_send_clear(call)
            started = bound.call if bound is not None else None
            if started is not None and started is not call:  # a call that started meanwhile:
                with started.lock:  # the rotation forgot the mark its text may have set
                    if started.streams[index].unsent:
                        order.mark(self)
            if taken is not None:  # older than what ipykernel buffered for other requests
                head, withheld, spill_ranges, tail = taken
                parent = call.parents[index]
                yield parent, head
                if withheld:
                    self._kernelexec_notice(call, parent, withheld, spill_ranges)
                yield parent, tail
            for frozen_parent, buffer in old_buffers.items():
                data = buffer.getvalue()
                buffer.close()
                yield dict(frozen_parent), data

        def _kernelexec_send_taken(self, call, taken):
            """Send what ``call.take`` gave, as ipykernel's ``_flush`` sends a buffer."""
            head, withheld, spill_ranges, tail = taken
            parent = call.parents[index]
            self._kernelexec_send_text(parent, head)
            if withheld:
                self._kernelexec_notice(call, parent, withheld, spill_ranges)
            self._kernelexec_send_text(parent, tail)

        def _kernelexec_send_text(self, parent, text):
            if not text:
                return
            self.session.pid = os.getpid()
            msg = self.session.msg("stream", {"name": self.name, "text": text}, parent=parent)
            for hook in self._hooks:
                msg = hook(msg)
                if msg is None:
                    return
            self.session.send(self.pub_thread, msg, ident=self.topic)

        def _kernelexec_send_clear(self, call):
            self.session.pid = os.getpid()
            msg = self.session.msg("clear_output", {"wait": True}, parent=call.parents[index])
            self.session.send(self.pub_thread, msg, ident=bound.clear_topic)

        def _kernelexec_notice(self, call, parent, withheld, spill_ranges):
            content = {"name": self.name, "withheld_bytes": withheld, "spill_ranges": spill_ranges}
            self.session.pid = os.getpid()  # as ipykernel's _flush does: the send checks it
            msg = self.session.msg(call.notice_type, content, parent=parent)
            self.session.send(self.pub_thread, msg, ident=self.topic)

        def flush(self):
            # Every display, result, traceback and clear_output flushes both streams first: what
            # waits in the fd pipe was written before them.
            if forwarder is not None:
                forwarder.drain()
            # Nothing written since the last send: nothing to wait for (every display flushes both
            # streams, a round trip to the I/O thread, which later messages queue behind anyway).
            if order.holds_nothing(self) and self.pub_thread is not None:
                return
            return base.flush(self)

        def _rotate_buffers(self):
            with self._buffer_lock:
                old_buffers = self._buffers
                self._buffers = order.new_buffers(self)
            return old_buffers

        namespace.update(
            _flush_buffers=_flush_buffers, _rotate_buffers=_rotate_buffers,
            _kernelexec_notice=_kernelexec_notice, flush=flush, _kernelexec_send_taken=_kernelexec_send_taken,
            _kernelexec_send_text=_kernelexec_send_text, _kernelexec_send_clear=_kernelexec_send_clear,
        )
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
        self._in_flight = {}  # id(stream) -> sends taking or queueing its text now

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

    def holds_nothing(self, stream):
        """Whether ``stream`` has had no text since its last send, and that send is queued whole.

        A send takes the text first, then queues it piece by piece (``_splitter``): until the
        last piece is queued, a message queued by another thread (the reply's idle status)
        could overtake the rest. Read in this order: a send in progress counts before it takes.
        """
        key = id(stream)
        return self._oldest.get(key, 0) is None and not self._in_flight.get(key)

    def sending(self, stream, change):
        """Count a send of ``stream`` starting (1) or over (-1); on the I/O thread."""
        key = id(stream)
        self._in_flight[key] = self._in_flight.get(key, 0) + change

    def mark(self, stream):
        """``stream`` holds text again, kept outside its buffers (``_OutputBound``)."""
        key = id(stream)
        if self._oldest.get(key) is None:
            self._oldest[key] = self._stamp()

    def adopt(self, stream):
        """Put ``stream``'s text not sent yet in stamped buffers."""
        with stream._buffer_lock:
            buffers = self.new_buffers(stream)
            for parent, buffer in stream._buffers.items():
                if buffer.tell():
                    buffers[parent].write(buffer.getvalue())
            stream._buffers = buffers

    def stamp(self, stream):
        """The stamp of ``stream``'s oldest unsent text (None when it holds none)."""
        return self._oldest.get(id(stream))

    def forget(self, stream):
        """The bound's text of ``stream`` was taken or dropped outside a send: the stream holds
        nothing now, unless its buffers do (called under the call's lock, see ``_take_and_send``)."""
        with stream._buffer_lock:
            if not any(buffer.tell() for buffer in stream._buffers.values()):
                self._oldest[id(stream)] = None

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
