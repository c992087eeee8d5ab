"""The timeout ladder driven by scripted backends: no kernel, each behaviour on demand.

A ``ScriptedKernel`` implements ``KernelBackend`` and answers an execute request the way its
script says: at once, late, never, ignoring interrupts, dying mid-call, or dropping the request
when interrupted (as ipykernel does for an interrupt that lands just before the code starts).
The real-kernel tests of the same behaviours are in test_session.py and test_faults.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from messages import msg

import kernelexec as kx
from kernelexec._backend import KernelDeath, KernelDied
from kernelexec._execute import Call, result_of, run_request
from kernelexec._state import SessionHooks

pytestmark = pytest.mark.timeout(30)


@dataclass
class Script:
    reply_after: float | None = 0.0  # None: never replies on its own
    on_interrupt: str = "raise"  # "raise" KeyboardInterrupt, "ignore", or "drop" the request
    die_after: float | None = None  # the process ends this long after the request
    output: str = "out\n"


@dataclass
class ScriptedKernel:
    script: Script
    kernel_id: str = "scripted"
    info: dict[str, Any] = field(default_factory=lambda: {"language_info": {"name": "python"}})
    needs_nproc_limit: bool = False
    installed: str | None = None
    limits_memory: bool = False
    interrupts: int = 0
    closed: bool = False
    _inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = field(default_factory=asyncio.Queue)
    _request: dict[str, Any] | None = None
    _death: KernelDeath | None = None
    _finished: bool = False

    @property
    def is_alive(self) -> bool:
        return self._death is None and not self.closed

    def request(self, channel: str, msg_type: str, content: dict[str, Any], parent: Any = None) -> str:
        self._request = msg(msg_type, content, "")["header"]
        loop = asyncio.get_running_loop()
        self._send("iopub", "status", {"execution_state": "busy"})
        self._send("iopub", "execute_input", {"code": content.get("code", ""), "execution_count": 1})
        self._send("iopub", "stream", {"name": "stdout", "text": self.script.output})
        if self.script.reply_after is not None:
            loop.call_later(self.script.reply_after, self._finish, "ok")
        if self.script.die_after is not None:
            loop.call_later(self.script.die_after, self._die)
        return self._request["msg_id"]

    async def receive(self, timeout: float | None) -> tuple[str, dict[str, Any]] | None:
        if self._inbox.empty() and self._death is not None:
            raise KernelDied(self._death)
        try:
            item = await asyncio.wait_for(self._inbox.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if item[0] == "died" and self._death is not None:
            raise KernelDied(self._death)
        return item

    async def interrupt(self) -> None:
        self.interrupts += 1
        if self.script.on_interrupt == "raise":
            self._finish("error")
        elif self.script.on_interrupt == "drop":
            self._finished = True
            self._send("iopub", "status", {"execution_state": "idle"})

    async def shutdown(self, *, graceful: bool = True) -> None:
        self.closed = True

    def _send(self, channel: str, msg_type: str, content: dict[str, Any]) -> None:
        assert self._request is not None
        self._inbox.put_nowait((channel, msg(msg_type, content, self._request["msg_id"])))

    def _finish(self, status: str) -> None:
        if self._finished or self._death is not None:
            return
        self._finished = True
        content: dict[str, Any] = {"status": status, "execution_count": 1}
        if status == "error":
            content.update(ename="KeyboardInterrupt", evalue="", traceback=["KeyboardInterrupt"])
        self._send("shell", "execute_reply", content)
        self._send("iopub", "status", {"execution_state": "idle"})

    def _die(self) -> None:
        if not self._finished:
            self._death = KernelDeath(exit_code=9)
            self._inbox.put_nowait(("died", {}))  # wakes a receive, as a pidfd does


async def ladder(script: Script, *, time_limit: float = 0.3, grace: float = 0.3):
    kernel = ScriptedKernel(script)
    call = Call.send(kernel, "code", max_output_bytes=1000)
    started = time.monotonic()
    outcome = await run_request(call, time_limit, grace)
    result = result_of(outcome, "code", restarted=outcome.needs_restart, closed=False, output_path=None)
    return kernel, outcome, result, time.monotonic() - started


def test_a_prompt_reply_finishes_the_call():
    asyncio.run(_test_a_prompt_reply_finishes_the_call())


async def _test_a_prompt_reply_finishes_the_call():
    kernel, outcome, result, _ = await ladder(Script(reply_after=0.0))
    assert result.status == "ok" and result.stdout == "out\n"
    assert not outcome.needs_restart and kernel.interrupts == 0


def test_a_late_reply_within_the_limit_is_waited_for():
    asyncio.run(_test_a_late_reply_within_the_limit_is_waited_for())


async def _test_a_late_reply_within_the_limit_is_waited_for():
    kernel, outcome, result, elapsed = await ladder(Script(reply_after=0.2), time_limit=2)
    assert result.ok and kernel.interrupts == 0 and 0.2 <= elapsed < 2


def test_past_the_deadline_the_kernel_is_interrupted_and_its_state_kept():
    asyncio.run(_test_past_the_deadline_the_kernel_is_interrupted_and_its_state_kept())


async def _test_past_the_deadline_the_kernel_is_interrupted_and_its_state_kept():
    kernel, outcome, result, elapsed = await ladder(Script(reply_after=None, on_interrupt="raise"))
    assert result.status == "timeout" and result.error.ename == "TimeoutError"
    assert kernel.interrupts == 1 and not outcome.needs_restart
    assert result.stdout == "out\n"  # output from before the cut is kept
    assert elapsed < 0.3 + 0.3


def test_an_ignored_interrupt_needs_a_restart_after_the_grace():
    asyncio.run(_test_an_ignored_interrupt_needs_a_restart_after_the_grace())


async def _test_an_ignored_interrupt_needs_a_restart_after_the_grace():
    kernel, outcome, result, elapsed = await ladder(Script(reply_after=None, on_interrupt="ignore"))
    assert result.status == "timeout" and outcome.needs_restart and outcome.death is None
    assert kernel.interrupts == 1 and result.stdout == "out\n"
    assert 0.6 <= elapsed < 2


def test_a_kernel_dying_mid_call_ends_it_at_once_with_its_output():
    asyncio.run(_test_a_kernel_dying_mid_call_ends_it_at_once_with_its_output())


async def _test_a_kernel_dying_mid_call_ends_it_at_once_with_its_output():
    kernel, outcome, result, elapsed = await ladder(Script(reply_after=None, die_after=0.05), time_limit=5)
    assert result.status == "died" and outcome.needs_restart
    assert "exited with code 9" in result.error.evalue and result.stdout == "out\n"
    assert elapsed < 1 and kernel.interrupts == 0


def test_death_during_the_grace_is_reported_as_death():
    asyncio.run(_test_death_during_the_grace_is_reported_as_death())


async def _test_death_during_the_grace_is_reported_as_death():
    _, outcome, result, _ = await ladder(Script(reply_after=None, on_interrupt="ignore", die_after=0.4))
    assert result.status == "died" and outcome.death is not None


def test_a_request_dropped_on_interrupt_ends_soon_after_its_idle_status():
    asyncio.run(_test_a_request_dropped_on_interrupt_ends_soon_after_its_idle_status())


async def _test_a_request_dropped_on_interrupt_ends_soon_after_its_idle_status():
    kernel, outcome, result, elapsed = await ladder(
        Script(reply_after=None, on_interrupt="drop"), time_limit=0.2, grace=5
    )
    assert result.status == "timeout" and not outcome.needs_restart
    assert elapsed < 0.2 + 0.5 + 1  # the grace (5 s) is not waited out


def test_a_user_interrupt_marks_the_result_interrupted():
    asyncio.run(_test_a_user_interrupt_marks_the_result_interrupted())


async def _test_a_user_interrupt_marks_the_result_interrupted():
    kernel = ScriptedKernel(Script(reply_after=None, on_interrupt="raise"))
    call = Call.send(kernel, "code", max_output_bytes=1000)
    running = asyncio.ensure_future(run_request(call, 10, 1))
    await asyncio.sleep(0.05)
    call.interrupted = True
    await call.interrupt()
    outcome = await running
    result = result_of(outcome, "code", restarted=False, closed=False, output_path=None)
    assert result.status == "interrupted" and kernel.interrupts == 1


def test_cancelling_the_call_interrupts_the_kernel():
    asyncio.run(_test_cancelling_the_call_interrupts_the_kernel())


async def _test_cancelling_the_call_interrupts_the_kernel():
    kernel = ScriptedKernel(Script(reply_after=None, on_interrupt="ignore"))
    call = Call.send(kernel, "code", max_output_bytes=1000)
    running = asyncio.ensure_future(run_request(call, 10, 1))
    await asyncio.sleep(0.05)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert kernel.interrupts == 1


def test_the_session_restarts_a_kernel_the_ladder_gave_up_on():
    asyncio.run(_test_the_session_restarts_a_kernel_the_ladder_gave_up_on())


async def _test_the_session_restarts_a_kernel_the_ladder_gave_up_on():
    kernels: list[ScriptedKernel] = []

    async def scripted_kernels() -> ScriptedKernel:
        kernels.append(ScriptedKernel(Script(reply_after=None if not kernels else 0.0, on_interrupt="ignore")))
        return kernels[-1]

    hooks = SessionHooks(kernel_source=scripted_kernels)
    async with kx.AsyncSession(timeout=0.2, interrupt_grace=0.2, _hooks=hooks) as s:
        stuck = await s.execute("while True: pass")
        assert stuck.status == "timeout" and stuck.restarted
        assert kernels[0].closed and len(kernels) == 2
        assert (await s.execute("1")).ok
        assert s.stats.restarts == 1 and s.stats.timeouts == 1
