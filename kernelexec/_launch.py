"""Getting a kernel ready for a session, and running one request to completion.

``launch_kernel`` starts a kernel through the backend seam and prepares it (kernelexec's in-kernel
hooks, then the caller's startup code). Sessions call it for a cold start; the warm pool calls it
ahead of time. ``pump`` feeds one request's messages to its collector until the request is
complete, the deadline passes, or the kernel dies.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import _kernel_side
from ._collector import OutputCollector
from ._errors import KernelStartError
from ._kernel import KernelBackend, KernelDeath, KernelDied, start_kernel
from ._options import InputHandler, SessionOptions
from ._traceback import plain_traceback

log = logging.getLogger("kernelexec")

# Longest stream message the kernel sends (characters): bounds the client's memory per message.
MAX_MESSAGE_CHARS = 256 * 1024
# How many messages ``pump`` handles in a row before it lets other tasks run.
YIELD_EVERY_MESSAGES = 16
# How long a call waits for its idle status once the reply is in and the kernel is quiet.
IDLE_AFTER_REPLY_SECONDS = 3.0
# How long it waits for its reply once the idle status is in, when it interrupted the kernel.
REPLY_AFTER_IDLE_SECONDS = 0.5
_BOOTSTRAP_SOURCE = inspect.getsource(_kernel_side)

KernelSource = Callable[[], Awaitable[KernelBackend]]


class Deadline:
    """``pump`` stopped because the deadline passed."""


DEADLINE = Deadline()


async def launch_kernel(options: SessionOptions) -> KernelBackend:
    """Start a kernel for ``options`` and prepare it; raises ``KernelStartError``."""
    kernel = await start_kernel(options)
    try:
        await prepare_kernel(kernel, options)
    except BaseException:
        await kernel.shutdown(graceful=False)
        raise
    return kernel


async def prepare_kernel(kernel: KernelBackend, options: SessionOptions) -> None:
    """Install kernelexec's in-kernel hooks (Python kernels), then run the startup code."""
    nproc_in_kernel = getattr(kernel, "needs_nproc_limit", False)
    if kernel.info.get("language_info", {}).get("name") == "python":
        nproc = options.max_processes if nproc_in_kernel else None
        install = (
            f"install({MAX_MESSAGE_CHARS}, {options.memory_limit!r}, {nproc!r},"
            f" {options.max_output_bytes!r})"
        )
        code = (
            f"exec(compile({_BOOTSTRAP_SOURCE + chr(10) + install!r}, '<kernelexec>', 'exec'),"
            " {'__name__': '__kernelexec__'})"
        )
        try:
            await run_private(kernel, code, options, "kernelexec's in-kernel setup")
        except KernelStartError as error:
            if options.memory_limit is None:
                raise
            raise KernelStartError(_memory_limit_too_small(options.memory_limit, error)) from error
    else:
        unenforced = [
            name for name, needed in (
                ("memory_limit", options.memory_limit is not None),
                ("max_processes", nproc_in_kernel),
            ) if needed
        ]  # fmt: skip
        if unenforced:
            language = kernel.info.get("language_info", {}).get("name", "unknown")
            raise KernelStartError(
                f"{' and '.join(unenforced)} cannot be enforced in a {language!r} kernel (kernelexec "
                "applies it from inside Python kernels); leave it unset for this kernel"
            )
    if options.startup_code:
        await run_private(kernel, options.startup_code, options, "startup_code")


async def run_private(kernel: KernelBackend, code: str, options: SessionOptions, what: str) -> None:
    """Run ``code`` silently (no history, no execution count); raise if it fails."""
    msg_id = kernel.request("shell", "execute_request", execute_content(code, silent=True))
    collector = OutputCollector(msg_id, max_output_bytes=options.max_output_bytes)
    outcome = await pump(kernel, collector, time.monotonic() + options.startup_timeout)
    if isinstance(outcome, KernelDeath):
        raise KernelStartError(f"the kernel died while running {what}: {outcome.describe()}")
    if outcome is DEADLINE:
        raise KernelStartError(
            f"{what} did not finish within startup_timeout ({options.startup_timeout:g} s)"
        )
    reply = collector.reply or {}
    if reply.get("status") != "ok":
        traceback = plain_traceback(reply.get("traceback", [])) or reply.get("evalue", "")
        raise KernelStartError(f"{what} failed in the kernel; fix it and retry:\n{traceback}")


def _memory_limit_too_small(memory_limit: int, error: KernelStartError) -> str:
    cause = str(error).strip().splitlines()[-1]  # the kernel's refusal, its death, or the wait
    return (
        f"the kernel could not start with memory_limit={memory_limit / 2**20:g} MiB, which is "
        f"probably too small ({cause}). memory_limit caps virtual memory (RLIMIT_AS), and an "
        "IPython kernel needs about 768 MiB of it to start: raise it (1 GiB or more) or leave it unset"
    )


def execute_content(code: str, *, silent: bool = False, allow_stdin: bool = False) -> dict[str, Any]:
    return {
        "code": code,
        "silent": silent,
        "store_history": not silent,
        "user_expressions": {},
        "allow_stdin": allow_stdin,
        "stop_on_error": True,
    }


async def pump(
    kernel: KernelBackend,
    collector: OutputCollector,
    deadline: float,
    input_handler: InputHandler | None = None,
) -> KernelDeath | Deadline | None:
    """Feed the request's messages to its collector until it is complete (``None``)."""
    received = 0
    last_message_at = time.monotonic()
    while not collector.complete:
        # A flood of output never makes receive wait: check the deadline here, and let the rest
        # of the event loop (other sessions, interrupt(), cancellation) run now and then.
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            return DEADLINE
        if collector.idle and collector.reply is None and not collector.interrupt_sent:
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
            item = await kernel.receive(left)
        except KernelDied as died:
            return died.death
        if item is None:
            continue  # the loop decides: deadline passed, or quiet after the reply
        last_message_at = time.monotonic()
        channel, msg = item
        if channel == "stdin":
            _answer_input(kernel, msg, input_handler)
        else:
            collector.feed(channel, msg)
    return None


def _answer_input(kernel: KernelBackend, msg: dict[str, Any], handler: InputHandler | None) -> None:
    if handler is None or msg["header"]["msg_type"] != "input_request":
        return
    content = msg["content"]
    try:
        value = handler(content.get("prompt", ""), bool(content.get("password", False)))
    except Exception:
        log.exception("input_handler raised; the kernel's input() gets an empty string")
        value = ""
    kernel.request("stdin", "input_reply", {"value": str(value)}, parent=msg)
