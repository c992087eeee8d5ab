"""Waiting for a new kernel to be ready: its kernel_info reply and iopub status, in either order.

The two come on different sockets, so their order is not fixed; a real kernel gives both orders
(measured: the status first about half the time for forked kernels). A scripted backend stands in
for the kernel here, because a real one cannot be made to give one order on demand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from kernelexec._backend import READY_RESEND_SECONDS, wait_until_ready
from kernelexec._errors import KernelStartError

pytestmark = pytest.mark.timeout(30)


class ScriptedKernel:
    """Answers each kernel_info_request with ``order`` (``"shell"``/``"iopub"`` messages)."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.requests = 0
        self.queue: list[tuple[str, dict[str, Any]]] = []

    def request(self, channel: str, msg_type: str, content: dict[str, Any], parent: Any = None) -> str:
        msg_id = f"request-{self.requests}"
        for reply_channel in self.order:
            msg_type = "kernel_info_reply" if reply_channel == "shell" else "status"
            content = {"status": "ok"} if reply_channel == "shell" else {"execution_state": "idle"}
            header = {"msg_type": msg_type}
            self.queue.append((reply_channel, {"header": header, "parent_header": {"msg_id": msg_id}, "content": content}))
        self.requests += 1
        return msg_id

    async def receive(self, timeout: float | None) -> tuple[str, dict[str, Any]] | None:
        if self.queue:
            return self.queue.pop(0)
        await asyncio.sleep(timeout or 0)
        return None


@pytest.mark.parametrize("order", [["shell", "iopub"], ["iopub", "shell"]])
def test_the_reply_and_status_in_either_order_are_ready_at_once(order):
    kernel = ScriptedKernel(order)
    started = time.monotonic()
    assert asyncio.run(wait_until_ready(kernel, 10, "a kernel")) == {"status": "ok"}
    assert kernel.requests == 1 and time.monotonic() - started < READY_RESEND_SECONDS


def test_a_missed_status_gets_the_request_sent_again():
    kernel = ScriptedKernel(["shell"])  # the status never arrives: iopub is not connected
    with pytest.raises(KernelStartError, match="did not become ready within 1 s"):
        asyncio.run(wait_until_ready(kernel, 1, "a kernel"))
    assert kernel.requests >= 3  # re-sent every READY_RESEND_SECONDS
