"""The warm pool's bookkeeping when starts finish, are claimed and are cancelled at awkward moments.

These race between asyncio callbacks, not kernels, so the pool's launcher is replaced by a fake
that makes the timing exact.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from kernelexec import _pool
from kernelexec._options import SessionOptions
from kernelexec._pool import KernelPool


class FakeKernel:
    kernel_id = "fake"
    is_alive = True

    def __init__(self) -> None:
        self.shut_down = False

    async def shutdown(self, graceful: bool = True) -> None:
        self.shut_down = True


def test_a_start_claimed_after_it_finished_but_before_its_callback_ran(monkeypatch, caplog):
    async def launch(launcher: object) -> FakeKernel:
        return FakeKernel()

    monkeypatch.setattr(_pool.Launcher, "launch", launch)

    async def main() -> None:
        pool = KernelPool(SessionOptions(), 1)
        pool.fill()
        await asyncio.sleep(0)  # the start runs and finishes; its done callback is only scheduled
        kernel = await pool.take()  # claims the finished start
        await asyncio.sleep(0.01)  # the callbacks run
        assert kernel not in pool._ready  # handed out once, not also kept in the pool
        await pool.close()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(main())
    assert "Exception in callback" not in caplog.text


def test_close_cancelled_while_waiting_for_a_start_is_cancelled(monkeypatch):
    async def slow_launch(launcher: object) -> FakeKernel:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # cleaning up a half-started kernel takes a moment
            raise
        return FakeKernel()

    monkeypatch.setattr(_pool.Launcher, "launch", slow_launch)

    async def main() -> None:
        pool = KernelPool(SessionOptions(), 1)
        pool.fill()
        await asyncio.sleep(0)
        closing = asyncio.create_task(pool.close())
        await asyncio.sleep(0.1)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing

    asyncio.run(main())
