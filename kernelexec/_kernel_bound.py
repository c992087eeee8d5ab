"""In-kernel source (sent with ``_kernel_streams``, which uses it): a call's stream output bounded
in the kernel, so a flood's middle never crosses the wire.

The client keeps the head and the tail of a call's output (``max_output_bytes``: half each) and
drops the middle. A call that asks for it (the ``kernelexec_output`` key of its execute_request)
has the kernel drop that middle itself: once a stream has sent more than the client's head holds,
its text waits in a rolling tail of at least the client's tail budget, and what falls out of the
tail is counted (and written to a file the client splices into the call's spill file). Each time
the stream sends (ipykernel's 0.2 s timer, a flush, the end of the call) it sends a notice of the
bytes it withheld, then its tail. So every withheld byte came after more than the client's head
budget of the same stream and is followed by at least its tail budget: the client would have
dropped it, and counts it the same. ``clear_output`` starts the count again, as it does there.

A progress loop (``clear_output(wait=True)`` then a print, thousands of times) is coalesced: a
waiting clear that comes after unsent text is kept back (the call is *stale*), and when the call
writes or displays again, that text is forgotten and one clear goes before the new output (the
clear would have hidden the text at once, and the client's outputs and counts start again there).
Whenever the unsent text must go instead (the 0.2 s timer, a flush, the end of the call), it goes
first and the clear right after it. So the client sees the state it would have seen, from a few
messages a second instead of two per step.
"""

import os
import threading

SPILL_BATCH_BYTES = 1 << 20  # withheld text is written to the spill file in batches this big
# How often a stream that withholds sends its tail while the call goes on (for on_output and
# progress): ipykernel sends every 0.2 s, which would send a tail's worth five times a second.
LIVE_TAIL_SECONDS = 1.0


def _schedule_flush_in(stream, seconds):
    """ipykernel's ``_schedule_flush``, with another interval."""
    stream._flush_pending = True
    stream.pub_thread.schedule(lambda: stream._io_loop.call_later(seconds, stream._flush))


def _schedule_bound_flush(stream, call, index):
    """ipykernel's send timer for the call's text on stream ``index``: its 0.2 s until the stream
    withholds, ``LIVE_TAIL_SECONDS`` after."""
    if call.withholding(index):
        _schedule_flush_in(stream, LIVE_TAIL_SECONDS)
    else:
        stream._schedule_flush()


def _utf8_size(text):
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _chars_for_at_least(text, min_bytes):
    """Characters of the shortest prefix of ``text`` of at least ``min_bytes`` UTF-8 bytes
    (kernelexec._text does the same in the client; this source cannot import it)."""
    if text.isascii():
        return min_bytes
    encoded = text[:min_bytes].encode("utf-8", "surrogatepass")
    end = min_bytes
    while end < len(encoded) and encoded[end] & 0xC0 == 0x80:
        end += 1
    return len(encoded[:end].decode("utf-8", "surrogatepass"))


class _OutputBound(object):
    """The bound of the running call, if it asked for one (``call``); set at each request."""

    def __init__(self, shell, streams):
        self.call = None
        self.drain_fds = None  # forwards what waits in the fd 1 and 2 pipes (set with them)
        self.order = None  # the streams' _SendOrder (set with them)
        self._shell = shell
        self.streams = streams
        shell.events.register("pre_execute", self._start_call)
        # A forked child's writes are ipykernel's to send (to the parent's I/O thread).
        os.register_at_fork(after_in_child=self._forget_call)
        publisher = self._publisher = getattr(shell, "display_pub", None)
        self.clear_topic = getattr(publisher, "topic", None)
        if hasattr(publisher, "register_hook"):
            publisher.register_hook(self._on_display_message)
        if callable(getattr(publisher, "clear_output", None)) and callable(getattr(publisher, "publish", None)):
            self._clear_output, self._publish = publisher.clear_output, publisher.publish
            publisher.clear_output, publisher.publish = self.clear_output, self.publish

    def clear_output(self, wait=False):
        """The display publisher's ``clear_output``: coalesced while the call's text is unsent."""
        call = self.call
        if call is not None:
            if self.drain_fds is not None:  # fd text written before the clear belongs before it
                self.drain_fds()
            if self._coalescible(call):
                if call.clear(wait):
                    return
            elif call.stale or call.owed_clear:
                for stream in self.streams:  # what stands before this clear goes first
                    stream.flush()
        return self._clear_output(wait)

    def publish(self, data, metadata=None, *args, **kwargs):
        """The display publisher's ``publish``: a display is output after a waiting clear (an
        update is not: it does not set a waiting clear off)."""
        call = self.call
        if call is not None and call.stale and not kwargs.get("update") and self._coalescible(call):
            call.output_follows()
        return self._publish(data, metadata, *args, **kwargs)

    def _coalescible(self, call):
        """Whether all of the call's unsent text is in its bound (none in ipykernel's buffers,
        which a clear kept back here would overtake) and the publisher speaks for the call."""
        if call.off:
            return False
        parent = getattr(self._publisher, "parent_header", None) or {}
        if parent.get("msg_id") != call.parents[0].get("msg_id"):
            return False
        for stream in self.streams:
            if any(buffer.tell() for buffer in list(stream._buffers.values())):
                return False
        return True

    def _start_call(self):
        old = self.call
        if old is not None:
            if old.has_pending():  # a thread of the last call wrote after it ended
                for stream in self.streams:
                    stream.flush()
            self.call = None
            old.close()
        shell_parent = getattr(self.streams[0], "parent_header", None)
        request = getattr(self._shell, "parent_header", None) or {}
        config = request.get("content", {}).get("kernelexec_output") if isinstance(request, dict) else None
        echoes = any(getattr(stream, "echo", None) is not None for stream in self.streams)
        if isinstance(config, dict) and shell_parent is not None and not echoes:
            self.call = _CallBound(config, self.streams, self.order)

    def _forget_call(self):
        self.call = None

    def end_call(self, *_):
        """The call's code is over (post_execute, after the fd pipes were drained): what it
        withholds from now on is not for its spill file, which the client deletes once it is done."""
        call = self.call
        if call is None or call.spill_path is None:
            return
        if any(state.unsent for state in call.streams):
            for stream in self.streams:  # the tails and their notices, the spill file written
                stream.flush()
        with call.lock:
            call.spill_path = None

    def _on_display_message(self, msg):
        # clear_output flushed the streams before this hook sees its message: what follows is
        # counted from zero, as the client's outputs start again there.
        call = self.call
        if call is not None and msg.get("header", {}).get("msg_type") == "clear_output":
            call.start_segment()
        return msg


class _StreamBound(object):
    """One stream's text of the call not sent yet: the part that must go (``head``) and the
    rolling tail."""

    def __init__(self, head_bytes):
        self.head_left = head_bytes  # bytes the stream sends before any is withheld
        self.head = []
        self.tail = []
        self.tail_size = 0
        self.withheld = 0  # bytes dropped since the last send
        self.spill_ranges = []  # where they are in the spill file: [offset, length] pairs
        self.unsent = False


class _CallBound(object):
    """The bound of one call: its streams' unsent text, the withheld counts, the spill file."""

    def __init__(self, config, streams, order):
        self.order = order
        self.stream_objects = streams
        max_bytes = int(config["max_output_bytes"])
        self.head_bytes = max_bytes // 2 + 1  # more than the client's head holds
        self.tail_bytes = max_bytes - max_bytes // 2
        self.trim_bytes = 2 * self.tail_bytes
        self.notice_type = config.get("notice", "kernelexec.output_withheld")
        self.parents = [stream.parent_header for stream in streams]
        self.lock = threading.Lock()
        self.streams = [_StreamBound(self.head_bytes) for _ in streams]
        self.spill_path = config.get("spill_path")
        self.spill_fd = None
        self.spill_offset = 0
        self.spill_batch = []  # (stream state, text) withheld and not written yet
        self.spill_batch_bytes = 0
        self.off = False  # the spill file cannot be written: the call is not bounded any more
        self.stale = False  # a clear_output(wait=True) stands after the unsent text, nothing since
        self.owed_clear = False  # a clear_output(wait=True) to send before the call's next text

    def start_segment(self):
        with self.lock:
            for state in self.streams:
                state.head_left = self.head_bytes

    def clear(self, wait):
        """A ``clear_output`` of the call: True when it is kept back (nothing to send now)."""
        with self.lock:
            if not wait:  # it hides the unsent text at once: that text need not go
                self._forget_unsent()
                self.stale = self.owed_clear = False
                return False
            if self.stale:
                return True  # nothing written since the last one
            if self.has_pending():
                self.stale = True
                return True
            return self.owed_clear  # one is owed already; else nothing unsent: send it now

    def output_follows(self):
        """Output of the call comes after a waiting clear (see ``write``): the text the clear
        stands after is forgotten, and the clear owed before the new output."""
        with self.lock:
            self._output_follows()

    def _output_follows(self):
        if self.stale:
            self.stale = False
            self._forget_unsent()
            self.owed_clear = True
            self.order.mark(self.stream_objects[0])  # a flush must send the clear

    def _forget_unsent(self):
        """Forget the unsent text (a clear hides it) and count the text after from zero."""
        for state, stream in zip(self.streams, self.stream_objects):
            state.head, state.tail = [], []
            state.tail_size = state.withheld = 0
            state.spill_ranges = []
            state.unsent = False
            state.head_left = self.head_bytes
            self.order.forget(stream)
        self.spill_batch, self.spill_batch_bytes = [], 0  # all of it the forgotten text's

    def take_stale(self):
        """If the call is stale, what the streams must send before the clear, oldest first
        (``[(index, taken)]``), the clear then owed. On the I/O thread, with every stream's
        send counted as in progress until what this gives is queued (see ``holds_nothing``)."""
        with self.lock:
            if not self.stale:
                return []
            self.stale = False
            taken = []
            for index, stream in enumerate(self.stream_objects):
                each = self.take(index)
                if each is not None:
                    stamp = self.order.stamp(stream)
                    taken.append((float("inf") if stamp is None else stamp, index, each))
                self.order.forget(stream)
                self.streams[index].head_left = self.head_bytes  # the text after the clear counts from zero
            self.owed_clear = True
        return [(index, each) for _, index, each in sorted(taken, key=lambda item: item[:2])]

    def has_pending(self):
        return any(state.unsent for state in self.streams)

    def withholding(self, index):
        """Whether stream ``index`` has sent its head (its text now waits in the tail)."""
        return self.streams[index].head_left <= 0

    def write(self, index, text, order, stream):
        """Take ``text`` written to stream ``index`` (``stream``, whose first unsent text
        ``order`` is told of)."""
        size = _utf8_size(text)
        with self.lock:
            if self.stale:
                self._output_follows()
            state = self.streams[index]
            if not state.unsent:
                state.unsent = True
                order.mark(stream)
            if state.head_left > 0:
                if size <= state.head_left:
                    state.head.append(text)
                    state.head_left -= size
                    return
                cut = _chars_for_at_least(text, state.head_left)
                state.head.append(text[:cut])
                state.head_left = 0
                text = text[cut:]
                if not text:
                    return
                size = _utf8_size(text)
            state.tail.append(text)
            state.tail_size += size
            if state.tail_size >= self.trim_bytes:
                self._withhold(state)

    def _withhold(self, state):
        """Drop the oldest tail text, keeping the shortest end of at least ``tail_bytes``.
        (Done once the tail holds twice that: each byte is handled about twice in all.)"""
        text = "".join(state.tail)
        if text.isascii():
            cut = size = len(text) - self.tail_bytes
        else:
            encoded = text.encode("utf-8", "surrogatepass")
            size = len(encoded) - self.tail_bytes
            while size > 0 and encoded[size] & 0xC0 == 0x80:  # keep the character whole
                size -= 1
            cut = len(encoded[:size].decode("utf-8", "surrogatepass"))
        if size <= 0:
            return
        state.tail = [text[cut:]]
        state.tail_size -= size
        self._drop(state, text[:cut] if self.spill_path is not None else None, size)

    def _drop(self, state, text, size):
        state.withheld += size
        if self.spill_path is None:
            return
        self.spill_batch.append((state, text))
        self.spill_batch_bytes += size
        if self.spill_batch_bytes >= SPILL_BATCH_BYTES:
            self._write_spill()

    def _write_spill(self):
        batch, self.spill_batch, self.spill_batch_bytes = self.spill_batch, [], 0
        if self.off or self.spill_path is None:  # None: the call ended while this batch waited
            return
        try:
            if self.spill_fd is None:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                self.spill_fd = os.open(self.spill_path, flags, 0o600)
            for state, text in batch:
                data = text.encode("utf-8", "replace")
                written = 0
                while written < len(data):
                    written += os.write(self.spill_fd, data[written:])
                ranges = state.spill_ranges
                if ranges and ranges[-1][0] + ranges[-1][1] == self.spill_offset:
                    ranges[-1][1] += len(data)
                else:
                    ranges.append([self.spill_offset, len(data)])
                self.spill_offset += len(data)
        except OSError:
            # No spill file: the kernel cannot withhold what the client must write there. What
            # was withheld is lost to the file (the count stays right); later text goes whole.
            self.off = True

    def take(self, index):
        """What stream ``index`` sends now: ``(head text, withheld bytes, spill ranges, tail
        text)``; called under the lock."""
        state = self.streams[index]
        if not state.unsent:
            return None
        if state.tail_size > self.tail_bytes:  # send no more than the client keeps
            self._withhold(state)
        if self.spill_batch:
            self._write_spill()
        taken = ("".join(state.head), state.withheld, state.spill_ranges, "".join(state.tail))
        state.head, state.tail = [], []
        state.tail_size = state.withheld = 0
        state.spill_ranges = []
        state.unsent = False
        return taken

    def close(self):
        if self.spill_fd is not None:
            try:
                os.close(self.spill_fd)
            except OSError:
                pass
            self.spill_fd = None
