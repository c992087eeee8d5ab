"""The ZMQ channels of a local kernel, read on the asyncio loop without polling.

Each socket's ``zmq.FD`` (and, on Linux, a pidfd for the kernel process) is watched with
``loop.add_reader``: a receive returns a ready message at once, or sleeps until a socket has one,
the kernel process exits, or the timeout passes. Nothing wakes up on a timer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import zmq
from jupyter_client.session import Session as ProtocolSession
from jupyter_client.session import json_unpacker

from ._wire import Message

log = logging.getLogger("kernelexec")

# Messages held in our iopub queue; at most 256 KiB each from kernels kernelexec prepared.
IOPUB_RECEIVE_QUEUE = 100

CHANNELS = (("iopub", zmq.SUB), ("shell", zmq.DEALER), ("stdin", zmq.DEALER))
RECONNECT_MS = 5


def channel_url(info: dict[str, Any], channel: str) -> str:
    if info["transport"] == "tcp":
        return f"tcp://{info['ip']}:{info[f'{channel}_port']}"
    return f"{info['transport']}://{info['ip']}-{info[f'{channel}_port']}"


class ZmqChannels:
    """iopub, shell and stdin sockets of one kernel, with a waker on the event loop."""

    def __init__(self, context: zmq.Context, info: dict[str, Any], session: ProtocolSession):
        self.session = session
        self._sockets: list[tuple[str, zmq.Socket]] = []
        self._by_name: dict[str, zmq.Socket] = {}
        self._stdin_monitor: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Everyone sleeping in wait(): a call's receive and a shutdown may wait at the same time.
        self._waiters: set[asyncio.Future[None]] = set()
        self._watched_fds: list[int] = []
        try:
            for channel, kind in CHANNELS:
                socket = context.socket(kind)
                self._sockets.append((channel, socket))
                self._by_name[channel] = socket
                self._set_up(socket, channel, kind, info)
        except BaseException:  # a socket left open would make the context's term() wait forever
            self.close()
            raise

    def _set_up(self, socket: zmq.Socket, channel: str, kind: int, info: dict[str, Any]) -> None:
        socket.linger = 0
        # pyzmq sends a bigger frame without copying it, through a garbage-collector thread
        # (with a ZMQ context of its own) that it starts for good on first use: a big cell
        # would leave it behind in the caller's process. Copying costs less than that.
        socket.copy_threshold = 2**31 - 1  # a C int
        # A kernel binds its sockets a moment after it starts: retry soon, not after ZMQ's 100 ms.
        socket.reconnect_ivl = RECONNECT_MS
        if kind == zmq.DEALER:
            socket.identity = self.session.bsession  # stdin replies are routed by this identity
        if channel == "iopub":
            socket.setsockopt(zmq.SUBSCRIBE, b"")
            # Queue few messages here: kernelexec's Python kernels then wait (XPUB_NODROP)
            # instead of filling our memory with output we would truncate anyway.
            socket.rcvhwm = IOPUB_RECEIVE_QUEUE
        if channel == "stdin":
            # The kernel's ROUTER drops an input request addressed to us until this
            # connection's handshake is done, and the kernel then waits for an answer forever.
            self._stdin_monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        socket.connect(channel_url(info, channel))

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start waking receivers on ``loop`` when a socket becomes readable."""
        self._loop = loop
        for _, socket in self._sockets:
            fd = socket.getsockopt(zmq.FD)
            loop.add_reader(fd, self._on_socket_event, socket)
            self._watched_fds.append(fd)

    def watch_fd(self, fd: int, on_ready: Callable[[], None]) -> None:
        """Also wake receivers when ``fd`` is readable; ``on_ready`` runs once, then it is unwatched."""
        assert self._loop is not None

        def ready() -> None:
            self._unwatch(fd)
            on_ready()
            self._wake()

        self._loop.add_reader(fd, ready)
        self._watched_fds.append(fd)

    def send(self, channel: str, msg_type: str, content: dict[str, Any], parent: Message | None = None) -> str:
        msg = self.session.send(self._by_name[channel], msg_type, content, parent=parent)
        return msg["header"]["msg_id"]

    def try_receive(self) -> tuple[str, Message] | None:
        """A message that is ready on any channel, or ``None`` without waiting."""
        for channel, socket in self._sockets:
            while True:
                try:
                    frames = socket.recv_multipart(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                msg = self._deserialize(frames)
                if msg is not None:
                    return channel, msg
        return None

    def any_ready(self) -> bool:
        # Reading ZMQ_EVENTS also re-arms the edge-triggered FD, so it must come after a drain.
        return any(socket.getsockopt(zmq.EVENTS) & zmq.POLLIN for _, socket in self._sockets)

    async def wait(self, timeout: float | None) -> None:
        """Sleep until a socket or watched fd may be readable, or ``timeout`` seconds pass."""
        if self.any_ready():
            return
        loop = self._loop
        assert loop is not None
        waiter = loop.create_future()
        self._waiters.add(waiter)
        timer = None if timeout is None else loop.call_later(max(timeout, 0), _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()

    def stdin_connected(self) -> bool:
        """Whether the stdin connection is made, so that the kernel's input requests reach us."""
        if self._stdin_monitor is None:
            return True
        try:
            self._stdin_monitor.recv_multipart(zmq.NOBLOCK)  # its only event: handshake done
        except zmq.Again:
            return False
        self._close_stdin_monitor()
        return True

    def _close_stdin_monitor(self) -> None:
        if self._stdin_monitor is not None:
            self._by_name["stdin"].disable_monitor()
            self._stdin_monitor.close(linger=0)
            self._stdin_monitor = None

    def close(self) -> None:
        self._close_stdin_monitor()
        for fd in list(self._watched_fds):
            self._unwatch(fd)
        for _, socket in self._sockets:
            socket.close(linger=0)
        self._wake()

    def _unwatch(self, fd: int) -> None:
        if fd in self._watched_fds:
            self._watched_fds.remove(fd)
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(fd)

    def _on_socket_event(self, socket: zmq.Socket) -> None:
        if socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._wake()

    def wake(self) -> None:
        """Wake everyone waiting, to look again (news from elsewhere: an exit status)."""
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            _resolve(waiter)

    def _deserialize(self, frames: list[bytes]) -> Message | None:
        """The message, or ``None`` (logged) for one that cannot be read: it must not end a call."""
        try:
            _, msg_frames = self.session.feed_identities(frames, copy=True)
        except ValueError as error:
            log.warning("dropped a malformed kernel message: %s", error)
            return None
        try:
            return self.session.deserialize(msg_frames, content=True, copy=True)
        except (UnicodeDecodeError, ValueError) as error:
            if "Signature" in str(error):  # garbled or forged: nothing in it can be trusted
                log.warning("dropped a kernel message that failed its signature check: %s", error)
                return None
        # A fast unpacker (orjson) rejects invalid UTF-8; the tolerant one replaces it. The first
        # attempt recorded the signature, so the second must not see it as a replay.
        self.session.digest_history.discard(msg_frames[0])
        unpack = self.session.unpack
        self.session.unpack = json_unpacker
        try:
            return self.session.deserialize(msg_frames, content=True, copy=True)
        except (UnicodeDecodeError, ValueError) as error:
            log.warning("dropped a kernel message that could not be decoded: %s", error)
            return None
        finally:
            self.session.unpack = unpack


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def open_pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when process ``pid`` exits (Linux), else ``None``."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None

