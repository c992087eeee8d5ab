"""The kernel factory: start the kernel a session's options ask for, and prepare it.

``launch_kernel`` is the one way a session gets a kernel (a cold start, a restart, or ahead of
time for the warm pool): it starts a backend (``LocalKernel`` or ``GatewayKernel``) and prepares
it — kernelexec's in-kernel hooks in Python kernels, then the caller's startup code.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

from . import _kernel_side
from ._backend import KernelBackend
from ._errors import KernelStartError
from ._execute import DEADLINE, Call, pump
from ._kernel import LocalKernel
from ._options import SessionOptions
from ._traceback import plain_traceback
from ._wire import ERROR_PAYLOAD_SOURCE, MAX_MESSAGE_CHARS, STDERR_KEEP_BYTES

_BOOTSTRAP_SOURCE = inspect.getsource(_kernel_side)

KernelSource = Callable[[], Awaitable[KernelBackend]]


async def launch_kernel(options: SessionOptions) -> KernelBackend:
    """Start a kernel for ``options`` and prepare it; raises ``KernelStartError``."""
    kernel = await start_kernel(options)
    try:
        await prepare_kernel(kernel, options)
    except BaseException:
        await kernel.shutdown(graceful=False)
        raise
    return kernel


async def start_kernel(options: SessionOptions) -> KernelBackend:
    """Start the backend ``options`` ask for, ready to take requests (not yet prepared)."""
    if options.gateway_url is not None:
        # Imported on first use: it brings tornado's HTTP and websocket clients.
        from ._gateway import GatewayKernel

        return await GatewayKernel.start(options)
    return await LocalKernel.start(
        options.kernel_name,
        cwd=options.cwd,
        env=options.kernel_env(),
        startup_timeout=options.startup_timeout,
        max_processes=options.max_processes,
    )


async def prepare_kernel(kernel: KernelBackend, options: SessionOptions) -> None:
    """Install kernelexec's in-kernel hooks (Python kernels), then run the startup code."""
    if kernel.info.get("language_info", {}).get("name") == "python":
        try:
            await run_private(kernel, bootstrap_code(kernel, options), options, "kernelexec's in-kernel setup")
        except KernelStartError as error:
            if options.memory_limit is None:
                raise
            raise KernelStartError(_memory_limit_too_small(options.memory_limit, error)) from error
    else:
        _refuse_unenforceable_limits(kernel, options)
    if options.startup_code:
        await run_private(kernel, options.startup_code, options, "startup_code")


def bootstrap_code(kernel: KernelBackend, options: SessionOptions) -> str:
    """Code that runs ``_kernel_side`` in a private namespace and installs its hooks."""
    nproc = options.max_processes if kernel.needs_nproc_limit else None
    install = (
        f"install({MAX_MESSAGE_CHARS}, {options.memory_limit!r}, {nproc!r},"
        f" {options.max_output_bytes!r}, {ERROR_PAYLOAD_SOURCE!r}, {STDERR_KEEP_BYTES!r})"
    )
    return (
        f"exec(compile({_BOOTSTRAP_SOURCE + chr(10) + install!r}, '<kernelexec>', 'exec'),"
        " {'__name__': '__kernelexec__'})"
    )


def _refuse_unenforceable_limits(kernel: KernelBackend, options: SessionOptions) -> None:
    """Limits kernelexec applies from inside Python kernels cannot bind another language's."""
    unenforced = [
        name for name, needed in (
            ("memory_limit", options.memory_limit is not None),
            ("max_processes", kernel.needs_nproc_limit),
        ) if needed
    ]  # fmt: skip
    if unenforced:
        language = kernel.info.get("language_info", {}).get("name", "unknown")
        raise KernelStartError(
            f"{' and '.join(unenforced)} cannot be enforced in a {language!r} kernel (kernelexec "
            "applies it from inside Python kernels); leave it unset for this kernel"
        )


async def run_private(kernel: KernelBackend, code: str, options: SessionOptions, what: str) -> None:
    """Run ``code`` silently (no history, no execution count); raise if it fails."""
    call = Call.send(kernel, code, silent=True, max_output_bytes=options.max_output_bytes)
    ended = await pump(call, time.monotonic() + options.startup_timeout)
    if ended is DEADLINE:
        raise KernelStartError(
            f"{what} did not finish within startup_timeout ({options.startup_timeout:g} s)"
        )
    if ended is not None:
        raise KernelStartError(f"the kernel died while running {what}: {ended.describe()}")
    reply = call.collector.reply or {}
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
