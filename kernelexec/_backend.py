"""The backend seam: what a session needs from a kernel, wherever it runs (a leaf module).

A session talks to its kernel only through ``KernelBackend``: send a request, receive the next
message (or learn that the kernel died), interrupt, shut down. ``LocalKernel`` (``_kernel``)
implements it over jupyter_client's ``AsyncKernelManager``, ``GatewayKernel`` (``_gateway``) over
a Jupyter gateway's REST API and websocket; ``_launch`` picks one. Tests drive the execute path
with scripted backends of their own.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ._errors import KernelStartError
from ._wire import Message, parent_id

# How long the first kernel_info_reply waits for its iopub status before the request is re-sent.
READY_RESEND_SECONDS = 0.2


@dataclass(frozen=True)
class KernelDeath:
    """What is known about how a kernel process ended."""

    exit_code: int | None = None
    signal_number: int | None = None
    detail: str = ""
    cause: str = ""  # known for certain (e.g. the memory limit), said instead of a guess

    def describe(self) -> str:
        if self.cause:
            return self.cause
        if self.signal_number is not None:
            cause = f"the kernel process was killed by {_signal_name(self.signal_number)}"
            if self.signal_number == getattr(signal, "SIGKILL", None):
                cause += (
                    " (usually the out-of-memory killer or a memory limit, or something outside"
                    " killed it)"
                )
            elif self.signal_number == getattr(signal, "SIGSEGV", None):
                cause += " (a crash in native code)"
            return cause
        if self.exit_code is not None:
            return f"the kernel process exited with code {self.exit_code}"
        return self.detail or "the connection to the kernel was lost"


class KernelDied(Exception):
    """Internal: the kernel ended while we were waiting for it."""

    def __init__(self, death: KernelDeath) -> None:
        super().__init__(death.describe())
        self.death = death


class KernelBackend(Protocol):
    """What a session needs from a kernel, wherever it runs."""

    kernel_id: str
    info: dict[str, Any]  # the kernel_info_reply content
    # max_processes must be enforced by the kernel on itself (RLIMIT_NPROC), see _containment.
    needs_nproc_limit: bool
    installed: str | None  # the install(...) call kernelexec's in-kernel hooks were installed with
    # memory_limit is enforced outside the kernel (a memory cgroup); else by it (RLIMIT_AS).
    limits_memory: bool
    # Where the kernel writes the output it withholds (see _kernel_bound): None for the client's
    # spill_dir; a sandboxed kernel cannot see that, only a directory bound into its sandbox.
    spill_directory: str | None

    def request(self, channel: str, msg_type: str, content: dict[str, Any], parent: Message | None = None) -> str:
        """Send a message; returns its msg_id."""

    async def receive(self, timeout: float | None) -> tuple[str, Message] | None:
        """The next ``(channel, message)`` from the kernel, or ``None`` once ``timeout`` passes.

        Raises ``KernelDied`` when the kernel has ended (after the messages it sent before dying
        have been received): death outranks the deadline, so a caller learns why a call ended.
        """

    async def interrupt(self) -> None:
        """Interrupt the running code, as the kernel spec's interrupt mode says."""

    async def shutdown(self, *, graceful: bool = True) -> None:
        """Stop the kernel and release everything held for it.

        ``graceful`` asks the kernel to exit first (killing it if it does not, promptly);
        otherwise it is killed at once.
        """

    @property
    def is_alive(self) -> bool:
        """Whether the kernel is still running."""


async def wait_until_ready(kernel: KernelBackend, timeout: float, what: str) -> dict[str, Any]:
    """Wait until ``kernel`` answers on shell *and* publishes on iopub; returns its kernel_info.

    A kernel_info_request is re-sent until its iopub ``status`` arrives too: a SUB socket that is
    still connecting misses messages, and the first execute must not lose its outputs.
    """
    deadline = time.monotonic() + timeout
    while True:
        reply = await _kernel_info(kernel, deadline, timeout, what)
        if reply is not None:
            return reply


async def _kernel_info(kernel: KernelBackend, deadline: float, timeout: float, what: str) -> dict[str, Any] | None:
    """One kernel_info round: the reply once its iopub status came too; ``None`` to re-send."""
    msg_id = kernel.request("shell", "kernel_info_request", {})
    reply: dict[str, Any] | None = None
    published = False  # its iopub status came: before or after the reply, they are apart sockets
    resend_at: float | None = None
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise KernelStartError(
                f"{what} did not become ready within {timeout:g} s. Raise startup_timeout if "
                "the machine is busy, or check that the kernel starts on its own "
                "(jupyter console --kernel NAME)."
            )
        if resend_at is not None and now >= resend_at:
            return None
        item = await kernel.receive(min(deadline, resend_at or deadline) - now)
        if item is None or parent_id(item[1]) != msg_id:
            continue
        channel, msg = item
        if channel == "shell":
            reply = msg["content"]
            if published:
                return reply
            resend_at = time.monotonic() + READY_RESEND_SECONDS
        elif channel == "iopub" and msg["header"]["msg_type"] == "status":
            if reply is not None:
                return reply
            published = True


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
