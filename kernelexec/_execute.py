"""One execute request, from sending it to its outcome: the timeout ladder in one function.

``run_request`` reads top to bottom: wait for the request until its deadline; past it, interrupt
and wait the grace; a kernel that died or did not answer the interrupt needs a restart, which the
session does (it owns the kernel). The outcome is plain data that ``result_of`` turns into an
``ExecutionResult``. Everything here talks to the kernel through ``KernelBackend`` only, so the
ladder is tested with scripted backends as well as real kernels.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import humanize

from ._backend import KernelBackend, KernelDeath, KernelDied
from ._collector import OutputCollector
from ._options import InputHandler
from ._result import ErrorInfo, ExecutionResult, Status
from ._traceback import error_payload, frames_from_payload
from ._wire import Message, execute_content

log = logging.getLogger("kernelexec")

# How many messages ``pump`` handles in a row before it lets other tasks run.
YIELD_EVERY_MESSAGES = 16
# How long a call waits for its idle status once the reply is in and the kernel is quiet.
IDLE_AFTER_REPLY_SECONDS = 3.0
# How long it waits for its reply once the idle status is in, when it interrupted the kernel.
REPLY_AFTER_IDLE_SECONDS = 0.5
# How long an interrupt waits for the kernel to say it runs the code before it is sent anyway.
INTERRUPT_START_WAIT_SECONDS = 0.5


class Deadline:
    """``pump`` stopped because the deadline passed."""


DEADLINE = Deadline()


@dataclass
class Call:
    """One request in flight: what ``interrupt()`` marks and the ladder reads."""

    kernel: KernelBackend
    collector: OutputCollector
    input_handler: InputHandler | None = None
    interrupted: bool = False  # someone called interrupt()
    timed_out: bool = False
    # An interrupt was sent while the request ran: the kernel may finish it without a reply.
    interrupt_sent: bool = False
    ended_by_restart: bool = False  # restart() killed the kernel on purpose: no state to restore
    code_started: asyncio.Event = field(default_factory=asyncio.Event)
    pending_interrupt: asyncio.Task[None] | None = None  # waits for the code to start

    @classmethod
    def send(
        cls, kernel: KernelBackend, code: str, *, silent: bool = False,
        output_bound: dict[str, Any] | None = None, **collecting: Any,
    ) -> Call:
        """Send ``code`` as an execute_request; ``output_bound`` asks a prepared kernel to bound
        the output itself (see ``_wire.OUTPUT_BOUND_KEY``); ``collecting`` configures its collector."""
        input_handler = collecting.pop("input_handler", None)
        content = execute_content(
            code, silent=silent, allow_stdin=input_handler is not None, output_bound=output_bound
        )
        msg_id = kernel.request("shell", "execute_request", content)
        return cls(kernel, OutputCollector(msg_id, **collecting), input_handler)

    async def interrupt(self) -> None:
        """Interrupt the call's code once the kernel runs it.

        An early interrupt goes wrong: ipykernel ignores SIGINT until it takes the request, and
        one that arrives after it took the request but before the code runs makes it drop the
        request without a reply. So until the kernel says it started (``execute_input``, or a
        first output) the interrupt waits in a task of its own while the call goes on reading, at
        most ``INTERRUPT_START_WAIT_SECONDS``. A request dropped after ``execute_input`` ends soon
        after its idle status (see ``pump``). While one interrupt waits, more add nothing.
        """
        if self.code_started.is_set():
            await self._send_interrupt()
        elif self.pending_interrupt is None:
            self.pending_interrupt = asyncio.create_task(self._interrupt_once_started())

    async def _interrupt_once_started(self) -> None:
        try:
            await asyncio.wait_for(self.code_started.wait(), INTERRUPT_START_WAIT_SECONDS)
        except asyncio.TimeoutError:
            pass
        await self._send_interrupt()

    async def _send_interrupt(self) -> None:
        self.interrupt_sent = True
        await self.kernel.interrupt()

    async def drop_pending_interrupt(self) -> None:
        """The call is over: an interrupt still waiting for it must not hit the next one."""
        task = self.pending_interrupt
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])  # unlike awaiting the task, a cancellation of ours still raises
        if not task.cancelled() and task.exception() is not None:
            log.debug("interrupting the kernel failed", exc_info=task.exception())


@dataclass(frozen=True)
class Outcome:
    """How a request ended, for the session to act on and ``result_of`` to describe."""

    call: Call
    exec_time: float
    time_limit: float
    death: KernelDeath | None = None  # the kernel died during the call
    needs_restart: bool = False  # died, or did not answer the interrupt within the grace


async def run_request(call: Call, time_limit: float, interrupt_grace: float) -> Outcome:
    """The timeout ladder: wait, interrupt at the deadline, wait the grace, else restart."""
    started = time.monotonic()
    try:
        ended = await pump(call, started + time_limit)
        if ended is DEADLINE:
            call.timed_out = True
            grace_ends = time.monotonic() + interrupt_grace  # interrupting takes time
            await call.interrupt()
            ended = await pump(call, grace_ends)
    except asyncio.CancelledError:  # the caller gave up (Ctrl-C): stop the code, then go
        await asyncio.shield(_interrupt_quietly(call.kernel))
        raise
    finally:
        await call.drop_pending_interrupt()
    death = ended if isinstance(ended, KernelDeath) else None
    return Outcome(
        call, time.monotonic() - started, time_limit, death, needs_restart=ended is not None
    )


async def pump(call: Call, deadline: float) -> KernelDeath | Deadline | None:
    """Feed the request's messages to its collector until it is complete (``None``)."""
    collector = call.collector
    received = 0
    last_message_at = time.monotonic()
    while not collector.complete:
        # A flood of output never makes receive wait: check the deadline here, and let the rest
        # of the event loop (other sessions, interrupt(), cancellation) run now and then.
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            return DEADLINE
        if collector.idle and collector.reply is None and not call.interrupt_sent:
            # The reply is on its way, however late (ipykernel 7 sends it from a thread that may
            # wait for the GIL); look again soon, in case an interrupt goes out meanwhile.
            left = min(left, REPLY_AFTER_IDLE_SECONDS)
        elif collector.reply is not None or collector.idle:
            # One of the two is in. The idle status can go missing from kernels kernelexec did not
            # prepare (IOPub drops messages past its high-water mark), and ipykernel sends no reply
            # for a request an interrupt hit just before the code started: after a quiet spell,
            # the call is over rather than timed out.
            quiet = IDLE_AFTER_REPLY_SECONDS if collector.reply is not None else REPLY_AFTER_IDLE_SECONDS
            quiet_left = last_message_at + quiet - now
            if quiet_left <= 0:
                if collector.reply is not None:
                    log.warning("no idle status %gs after the reply; ending the call", quiet)
                else:
                    log.debug("no reply %gs after the idle status; ending the call", quiet)
                return None
            left = min(left, quiet_left)
        received += 1
        if received % YIELD_EVERY_MESSAGES == 0:
            await asyncio.sleep(0)
        try:
            item = await call.kernel.receive(left)
        except KernelDied as died:
            return died.death
        if item is None:
            continue  # the loop decides: deadline passed, or quiet after the reply
        last_message_at = time.monotonic()
        _take(call, *item)
    return None


def _take(call: Call, channel: str, msg: Message) -> None:
    if channel == "stdin":
        _answer_input(call, msg)
        return
    call.collector.feed(channel, msg)
    if call.collector.started:
        call.code_started.set()


def _answer_input(call: Call, msg: Message) -> None:
    handler = call.input_handler
    if handler is None or msg["header"]["msg_type"] != "input_request":
        return
    content = msg["content"]
    try:
        value = handler(content.get("prompt", ""), bool(content.get("password", False)))
    except Exception:
        log.exception("input_handler raised; the kernel's input() gets an empty string")
        value = ""
    call.kernel.request("stdin", "input_reply", {"value": str(value)}, parent=msg)


async def _interrupt_quietly(kernel: KernelBackend) -> None:
    try:
        await kernel.interrupt()
    except Exception:
        log.debug("interrupting a cancelled call failed", exc_info=True)


def result_of(
    outcome: Outcome, code: str, *, restarted: bool, closed: bool, output_path: str | None,
    state_restored: bool = False,
) -> ExecutionResult:
    """The ``ExecutionResult`` of a finished request."""
    collector = outcome.call.collector
    reply = collector.reply or {}
    status, error = _status(outcome, reply, restarted, closed, state_restored)
    count = reply.get("execution_count")
    return ExecutionResult(
        status=status,
        outputs=collector.outputs(),
        error=error,
        exec_time=outcome.exec_time,
        execution_count=count if isinstance(count, int) else None,
        time_limit=outcome.time_limit,
        restarted=restarted,
        state_restored=state_restored,
        truncated_bytes=collector.truncated_bytes,
        output_path=output_path,
        code=code,
        timing=collector.timing,
    )


def _status(
    outcome: Outcome, reply: dict[str, Any], restarted: bool, closed: bool, state_restored: bool
) -> tuple[Status, ErrorInfo | None]:
    """The status of a finished call and the error that explains it."""
    call = outcome.call
    payload = error_payload(reply.get("payload", []))
    frames = list(frames_from_payload(payload))
    if outcome.death is not None:
        return "died", _died(outcome.death, restarted, closed, state_restored)
    traceback = list(reply.get("traceback", []))
    if call.timed_out:
        limit = humanize.naturaldelta(outcome.time_limit)
        return "timeout", ErrorInfo(
            "TimeoutError", f"Execution exceeded the time limit of {limit}", traceback, frames
        )
    if not reply:  # only a request an interrupt hit just before its code ends without one (see pump)
        return "interrupted", ErrorInfo(
            "KeyboardInterrupt", "interrupted before the code started; the kernel did not run it"
        )
    status = reply.get("status")
    if status == "ok":
        return "ok", None
    if status == "aborted":
        return "error", ErrorInfo("Aborted", "the kernel aborted this request without running it")
    ename, evalue = reply.get("ename", "Error"), reply.get("evalue", "")
    exc_info = dict(payload.get("exc_info", {})) if payload else {}
    error = ErrorInfo(ename, evalue, traceback, frames, exc_info)
    if call.interrupted and ename == "KeyboardInterrupt":
        return "interrupted", error
    return "error", error


def _died(death: KernelDeath, restarted: bool, closed: bool, state_restored: bool) -> ErrorInfo:
    if closed:
        fate = "the session was shut down and its state is lost"
    elif state_restored:
        fate = "the kernel was restarted with its state as it was before this call"
    elif restarted:
        fate = "the kernel was restarted and its state is lost"
    else:
        fate = "no new kernel could be started yet and its state is lost"
    evalue = f"{death.describe()} during this call; {fate}"
    detail = death.detail.splitlines()[-20:] if death.detail else []
    return ErrorInfo("KernelDied", evalue, detail)
