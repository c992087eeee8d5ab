"""A kernel on a Jupyter Kernel Gateway or Enterprise Gateway, behind the same backend seam.

``GatewayKernel`` implements ``KernelBackend``: the kernel is created with ``POST /api/kernels``,
messages travel over its websocket, interrupts use the REST endpoint, and shutdown deletes it.
What a local kernel learns from its process, a gateway kernel learns from the gateway:

- the kernel process died: the gateway publishes an iopub ``status`` of ``restarting`` or ``dead``
  with no parent (its restarter polls the process, every 3 s by default);
- the gateway went away or dropped the connection: the websocket closes. If the gateway still has
  the kernel, the websocket is reopened once with the same session id (the gateway replays what
  it buffered meanwhile); otherwise the kernel is reported dead, saying whether the gateway is
  unreachable or no longer has the kernel (culled for idleness, or deleted).

Only imported when a session is given a ``gateway_url``.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ._errors import KernelStartError
from ._gateway_wire import (
    REQUEST_TIMEOUT, ConnectionLost, GatewayConfig, GatewayError, GatewayREST, KernelWebSocket, Message,
)  # fmt: skip
from ._backend import KernelDeath, KernelDied, wait_until_ready
from ._wire import OUTPUT_DROPPED

if TYPE_CHECKING:
    from ._options import SessionOptions

log = logging.getLogger("kernelexec")

PROTOCOL_VERSION = "5.3"
# A call that hears nothing for this long asks the gateway whether the kernel still exists.
LIVENESS_CHECK_SECONDS = 2.0
# A kernel deletion that takes longer is left to the gateway (it kills the kernel on its own).
DELETE_TIMEOUT = 10.0
# Interrupting is a REST call; it must not eat the interrupt grace when the gateway is gone.
INTERRUPT_TIMEOUT = 5.0
_RATE_LIMIT_NOTICES = ("IOPub data rate exceeded.", "IOPub message rate exceeded.")


class GatewayKernel:
    """A kernel run by a Jupyter gateway, driven over its REST API and websocket."""

    needs_nproc_limit = False  # max_processes is refused for gateway kernels (see _options)
    installed: str | None = None
    limits_memory = False  # the kernel applies memory_limit to itself
    spill_directory = None  # not used: a gateway kernel's output is bounded by the client

    def __init__(self, rest: GatewayREST, kernel_id: str) -> None:
        self.config = rest.config
        self.kernel_id = kernel_id
        self.info: dict[str, Any] = {}
        self._rest = rest
        self._session_id = uuid.uuid4().hex
        self._username = _username()
        self._socket: KernelWebSocket | None = None
        self._death: KernelDeath | None = None
        self._closed = False

    @property
    def is_alive(self) -> bool:
        return (
            not self._closed
            and self._death is None
            and self._socket is not None
            and self._socket.is_open
        )

    @classmethod
    async def start(cls, options: SessionOptions) -> GatewayKernel:
        """Create a kernel on the gateway and return it once it answers on every channel.

        Cancelling waits for the start to end and deletes the kernel: tornado cannot abort a
        request in flight, and a kernel created by a forgotten request would stay on the gateway.
        """
        starting = asyncio.ensure_future(cls._start(options))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            try:
                kernel = await starting
            except Exception:
                raise asyncio.CancelledError() from None
            await kernel.shutdown(graceful=False)
            raise

    @classmethod
    async def _start(cls, options: SessionOptions) -> GatewayKernel:
        assert options.gateway_url is not None
        config = GatewayConfig(
            options.gateway_url, options.gateway_token, dict(options.gateway_headers or {}),
            options.gateway_validate_cert,
        )  # fmt: skip
        rest = GatewayREST(config)
        what = f"the {options.kernel_name!r} kernel on the gateway at {config.url}"
        env = {name: value for name, value in (options.env or {}).items() if value is not None}
        deadline = time.monotonic() + options.startup_timeout
        try:
            kernel_id = await rest.create_kernel(options.kernel_name, env, options.startup_timeout)
        except BaseException as error:
            rest.close()
            if isinstance(error, GatewayError):
                raise KernelStartError(f"could not create {what}: {error}. {_advice(error)}") from None
            raise
        kernel = cls(rest, kernel_id)
        try:
            kernel._socket = await KernelWebSocket.connect(
                config, kernel_id, kernel._session_id, max(deadline - time.monotonic(), 0.1)
            )
            kernel.info = await wait_until_ready(kernel, deadline - time.monotonic(), what)
        except BaseException as error:
            await kernel.shutdown(graceful=False)
            if isinstance(error, KernelDied):
                raise KernelStartError(f"{what} died while starting: {error.death.describe()}") from None
            if isinstance(error, GatewayError):
                raise KernelStartError(f"could not connect to {what}: {error}. {_advice(error)}") from None
            raise
        return kernel

    def request(self, channel: str, msg_type: str, content: dict[str, Any], parent: Message | None = None) -> str:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id, "msg_type": msg_type, "username": self._username,
            "session": self._session_id, "date": datetime.now(timezone.utc).isoformat(),
            "version": PROTOCOL_VERSION,
        }  # fmt: skip
        msg = {
            "header": header,
            "parent_header": dict(parent["header"]) if parent else {},
            "metadata": {},
            "content": content,
            "buffers": [],
        }
        if self._socket is not None:
            self._socket.send(channel, msg)
        return msg_id

    async def receive(self, timeout: float | None) -> tuple[str, Message] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise KernelDied(KernelDeath(detail="the kernel was shut down"))
            if self._death is not None:
                raise KernelDied(self._death)
            assert self._socket is not None
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            wait = LIVENESS_CHECK_SECONDS if left is None else min(left, LIVENESS_CHECK_SECONDS)
            try:
                item = await self._socket.receive(wait)
            except ConnectionLost as lost:
                await self._on_connection_lost(str(lost))
                continue
            if item is not None:
                return self._translate(*item)
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await self._check_still_there()

    async def interrupt(self) -> None:
        if not self.is_alive:
            return
        try:
            await asyncio.wait_for(self._rest.interrupt(self.kernel_id), INTERRUPT_TIMEOUT)
        except (GatewayError, asyncio.TimeoutError) as error:
            # Not raised: the call's result comes from receive(), which will see a lost gateway.
            log.warning("could not interrupt kernel %s on %s: %s", self.kernel_id, self.config.url, error)

    async def shutdown(self, *, graceful: bool = True) -> None:
        """Close the websocket and delete the kernel on the gateway (graceful or not: the
        gateway asks the kernel to exit and kills it if it does not)."""
        if self._closed:
            return
        self._closed = True
        if self._socket is not None:
            await self._socket.close()
        try:
            await asyncio.wait_for(self._delete(), DELETE_TIMEOUT)
        except (GatewayError, asyncio.TimeoutError) as error:
            log.warning(
                "could not delete kernel %s on %s (%s); the gateway's culling will remove it",
                self.kernel_id, self.config.url, error or "timed out",
            )  # fmt: skip
        finally:
            self._rest.close()

    async def _delete(self) -> None:
        delay = 0.05
        while True:
            try:
                return await self._rest.delete_kernel(self.kernel_id)
            except GatewayError as error:
                if error.code < 500 or error.code == 599:
                    raise
            # A gateway restarting a dead kernel fails deletions with HTTP 500 until the restart
            # is done (jupyter_client's MultiKernelManager): retry until then.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _translate(self, channel: str, msg: Message) -> tuple[str, Message]:
        """Notice the gateway's own messages: kernel death, and output it dropped."""
        header = msg.get("header", {})
        msg_type = header.get("msg_type")
        content = msg.get("content", {})
        if channel == "iopub" and msg_type == "status" and not msg.get("parent_header"):
            state = content.get("execution_state")
            if state in ("restarting", "dead"):
                self._death = KernelDeath(
                    detail=f"the kernel process died (the gateway at {self.config.url} reports it "
                    f"{state})"
                )
        elif msg_type == "stream" and str(content.get("text", "")).startswith(_RATE_LIMIT_NOTICES):
            msg = output_dropped_notice(msg)
        return channel, msg

    async def _check_still_there(self) -> None:
        """After a silence, ask whether the gateway still has the kernel: one deleted or culled
        on the gateway may leave the websocket open but silent."""
        try:
            state = await asyncio.wait_for(self._rest.kernel_state(self.kernel_id), LIVENESS_CHECK_SECONDS)
        except (GatewayError, asyncio.TimeoutError):
            return  # unreachable: the websocket's own close or ping timeout will tell
        self._death = _death_from_state(state, self.config.url)

    async def _on_connection_lost(self, reason: str) -> None:
        """Reopen the websocket if the gateway still has the kernel; otherwise record why not."""
        try:
            state = await self._rest.kernel_state(self.kernel_id)
        except GatewayError as error:
            self._death = KernelDeath(detail=f"lost the connection to the gateway: {error}")
            return
        self._death = _death_from_state(state, self.config.url)
        if self._death is not None:
            return
        log.warning("%s; reconnecting to kernel %s", reason, self.kernel_id)
        if self._socket is not None:
            await self._socket.close()
        try:
            self._socket = await KernelWebSocket.connect(
                self.config, self.kernel_id, self._session_id, REQUEST_TIMEOUT
            )
        except GatewayError as error:
            self._death = KernelDeath(detail=f"{reason}, and reconnecting failed: {error}")


def _death_from_state(state: dict[str, Any] | None, url: str) -> KernelDeath | None:
    """What the gateway's answer about the kernel (``None``: it has none) says of its death."""
    if state is None:
        return KernelDeath(
            detail=f"the gateway at {url} no longer has the kernel (culled for idleness, or deleted)"
        )
    if state.get("execution_state") == "dead":
        return KernelDeath(detail=f"the gateway at {url} reports the kernel dead")
    return None


def output_dropped_notice(msg: Message) -> Message:
    """The gateway's "IOPub data rate exceeded" stream message as an ``OUTPUT_DROPPED`` notice:
    its marker says what happened and how to keep the output (it does not say how much it
    dropped: at least one byte)."""
    notice = str(msg["content"].get("text", "")).strip()
    reason = notice.splitlines()[0].rstrip(".") if notice else "rate limit"
    marker = (
        f"\n[... output dropped by the gateway: {reason}; start the gateway with "
        "--ZMQChannelsWebsocketConnection.limit_rate=False to keep it ...]\n"
    )
    header = {**msg["header"], "msg_type": OUTPUT_DROPPED}
    return {**msg, "header": header, "content": {"text": marker, "dropped_bytes": 1}}


def _advice(error: GatewayError) -> str:
    if error.code in (401, 403):
        return "Check gateway_token (sent as 'Authorization: token ...') and gateway_headers."
    if error.code == 599:
        return "Check gateway_url and that the gateway is running and reachable from here."
    if error.code == 404:
        return "Check gateway_url (the gateway serves /api/kernels) and kernel_name."
    return "See the gateway's log for details."


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "kernelexec"
