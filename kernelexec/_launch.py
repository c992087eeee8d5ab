"""The kernel factory: where a session's kernels come from, and how each is prepared.

A ``Launcher`` belongs to one owner (a session, or the manager's warm pool) and makes all of its
kernels (a cold start, a restart, ahead of time): a gateway kernel when ``gateway_url`` is set;
otherwise, by default, a fork of a pre-imported template (``launcher="auto"`` or ``"fork"``,
local Python kernels on Linux), and a kernel spawned by jupyter_client where forking is not
possible (``"auto"`` says why at debug level; ``"fork"`` raises) or not wanted (``"spawn"``).
Every kernel is then prepared: kernelexec's in-kernel hooks in Python kernels, then the
caller's startup code. The launcher holds its template until ``close()``.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import os
import sys
import time
import zlib
from collections.abc import Awaitable, Callable

from . import _kernel_bound, _kernel_fds, _kernel_side, _kernel_streams
from ._backend import KernelBackend
from ._errors import KernelStartError
from ._execute import DEADLINE, Call, pump
from ._fork_client import ForkServer, Template, interpreter_of
from ._forked_kernel import ForkedKernel
from ._kernel import LocalKernel, kernel_spec
from ._options import SessionOptions
from ._process_kernel import MEMORY_CGROUP_MINIMUM
from ._traceback import plain_traceback
from ._wire import ERROR_PAYLOAD_SOURCE, MAX_MESSAGE_CHARS, STDERR_KEEP_BYTES

# The in-kernel source: modules of one job each, sent as one text (install() last).
KERNEL_SOURCE = "\n".join(
    inspect.getsource(module) for module in (_kernel_streams, _kernel_bound, _kernel_fds, _kernel_side)
)
log = logging.getLogger("kernelexec")

KernelSource = Callable[[], Awaitable[KernelBackend]]


class Launcher:
    """Makes (and prepares) the kernels of one owner; see the module docstring."""

    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self._template: Template | None = None
        self._no_fork: str | None = None  # why this launcher spawns instead
        self._holding: asyncio.Lock | None = None

    async def launch(self) -> KernelBackend:
        """A started, prepared kernel; raises ``KernelStartError``."""
        kernel = await self.start()
        try:
            await prepare_kernel(kernel, self.options)
        except BaseException:
            await kernel.shutdown(graceful=False)
            raise
        return kernel

    async def start(self) -> KernelBackend:
        """A started kernel, not yet prepared."""
        options = self.options
        if options.gateway_url is not None:
            # Imported on first use: it brings tornado's HTTP and websocket clients.
            from ._gateway import GatewayKernel

            return await GatewayKernel.start(options)
        if options.launcher != "spawn" and self._no_fork is None:
            try:
                return await self._fork()
            except KernelStartError as error:
                if options.launcher == "fork":
                    raise
                self._no_fork = str(error)
                log.debug("spawning kernels instead of forking them: %s", error)
        return await LocalKernel.start(
            options.kernel_name, cwd=options.cwd, env=options.kernel_env(),
            startup_timeout=options.startup_timeout, max_processes=options.max_processes,
            sandbox=options.sandbox,
            memory_limit=options.memory_limit,
        )  # fmt: skip

    @property
    def template_server(self) -> ForkServer | None:
        """The template this launcher forks from, if any: it reaps its kernels' orphans."""
        return self._template.server if self._template is not None else None

    def witnesses(self) -> list[ForkServer]:
        """Servers that may report the exit of kernels copied from ours (the template reaps
        the orphans of its kernels' descendants)."""
        server = self.template_server
        return [server] if server is not None else []

    def share_template(self, other: Launcher) -> None:
        """Hold ``other``'s template too (a fork's kernels descend from it)."""
        if other._template is not None and self._template is None and other._template.alive:
            self._template = other._template.hold()

    async def close(self) -> None:
        """Let go of the template (it stops with its last holder)."""
        template, self._template = self._template, None
        if template is not None:
            await template.release()

    async def _fork(self) -> KernelBackend:
        if self._holding is None:
            self._holding = asyncio.Lock()
        async with self._holding:  # concurrent starts (the pool's) share one hold of the template
            if self._template is None or not self._template.alive:
                await self.close()
                argv0 = fork_interpreter(self.options)
                options = self.options
                self._template = await Template.acquire(
                    argv0, options.kernel_env(), options.startup_timeout, sandbox=options.sandbox, cwd=options.cwd
                )  # fmt: skip
            if not self._template.loaded:
                await self._template.load(KERNEL_SOURCE)
            server = self._template.server
        return await ForkedKernel.start(server, self.options, witnesses=[], install=self_install(self.options))


def self_install(options: SessionOptions) -> str | None:
    """The ``install(...)`` call a forked kernel for ``options`` runs itself as it starts, if any.
    (A memory limit is left to the client's setup: it reports a limit too small to start.)"""
    return install_call(options, False, False) if options.memory_limit is None else None


def fork_interpreter(options: SessionOptions) -> str:
    """The interpreter whose template forks kernels for ``options``; ``KernelStartError`` says
    why there is none."""
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        raise KernelStartError(f"kernels are forked on Linux only (this is {sys.platform})")
    spec = kernel_spec(options.kernel_name)
    argv0 = interpreter_of(list(spec.argv)) if spec.language.lower() == "python" else None
    if argv0 is None:
        raise KernelStartError(
            f"the {options.kernel_name!r} kernel spec does not run ipykernel with a Python "
            f"interpreter ({' '.join(spec.argv)}); forks need one"
        )
    if spec.interrupt_mode != "signal" or spec.env:
        raise KernelStartError(
            f"the {options.kernel_name!r} kernel spec sets an interrupt mode or environment of its "
            "own, which forked kernels do not apply"
        )
    return argv0


async def prepare_kernel(kernel: KernelBackend, options: SessionOptions, *, startup_code: bool = True) -> None:
    """Install kernelexec's in-kernel hooks (Python kernels; unless the kernel did, as it
    started), then run the startup code (not in a copy of a kernel that ran it already)."""
    if kernel.info.get("language_info", {}).get("name") == "python":
        call = install_call(options, kernel.needs_nproc_limit, kernel.limits_memory)
        if kernel.installed != call:  # a forked kernel installs them itself as it starts
            try:
                await run_private(kernel, bootstrap_code(kernel, options), options, "kernelexec's in-kernel setup")
            except KernelStartError as error:
                if options.memory_limit is None:
                    raise
                raise KernelStartError(_memory_limit_too_small(options.memory_limit, error, kernel.limits_memory)) from error
            kernel.installed = call
    else:
        _refuse_unenforceable_limits(kernel, options)
    if options.startup_code and startup_code:
        await run_private(kernel, options.startup_code, options, "startup_code")


def bootstrap_code(kernel: KernelBackend, options: SessionOptions) -> str:
    """Code that runs ``_kernel_side`` in a private namespace and installs its hooks.

    The source travels compressed: a 60 KB request would cost little more, but pyzmq sends a
    frame over 64 KiB without copying it, through a garbage-collector thread (and its ZMQ
    context) that it starts in the client for good.
    """
    install = install_call(options, kernel.needs_nproc_limit, kernel.limits_memory)
    return packed_exec(KERNEL_SOURCE + "\n" + install, "__kernelexec__")


def packed_exec(source: str, module_name: str) -> str:
    """Code that runs ``source`` (sent compressed) in a namespace of its own named ``module_name``."""
    packed = base64.b85encode(zlib.compress(source.encode(), 9))
    return (
        "exec(compile(__import__('zlib').decompress(__import__('base64').b85decode("
        f"{packed!r})).decode(), '<kernelexec>', 'exec'), {{'__name__': {module_name!r}}})"
    )


def install_call(options: SessionOptions, nproc_limit: bool, limits_memory: bool) -> str:
    """The ``install(...)`` call that prepares a kernel for ``options`` (``nproc_limit``: the
    kernel enforces ``max_processes`` itself; ``limits_memory``: a cgroup enforces
    ``memory_limit``, else the kernel does, by RLIMIT_AS). Equal calls install equal hooks."""
    nproc = options.max_processes if nproc_limit else None
    memory = None if limits_memory else options.memory_limit
    return (
        f"install({MAX_MESSAGE_CHARS}, {memory!r}, {nproc!r},"
        f" {options.max_output_bytes!r}, {ERROR_PAYLOAD_SOURCE!r}, {STDERR_KEEP_BYTES!r})"
    )


def _refuse_unenforceable_limits(kernel: KernelBackend, options: SessionOptions) -> None:
    """Limits kernelexec applies from inside Python kernels cannot bind another language's."""
    unenforced = [
        name for name, needed in (
            ("memory_limit", options.memory_limit is not None and not kernel.limits_memory),
            ("max_processes", kernel.needs_nproc_limit),
        ) if needed
    ]  # fmt: skip
    if unenforced:
        language = kernel.info.get("language_info", {}).get("name", "unknown")
        raise KernelStartError(
            f"{' and '.join(unenforced)} cannot be enforced in a {language!r} kernel (kernelexec "
            "applies it from inside Python kernels); leave it unset for this kernel"
        )


async def run_private(kernel: KernelBackend, code: str, options: SessionOptions, what: str) -> Call:
    """Run ``code`` silently (no history, no execution count); raise if it fails. The call
    holds what the code printed."""
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
    return call


def _memory_limit_too_small(memory_limit: int, error: KernelStartError, by_cgroup: bool) -> str:
    cause = str(error).strip().splitlines()[-1]  # the kernel's refusal, its death, or the wait
    if by_cgroup:
        how = (f"memory_limit caps the kernel's memory (a memory cgroup), and a kernel needs about "
               f"{MEMORY_CGROUP_MINIMUM // 2**20} MiB to start: raise it or leave it unset")  # fmt: skip
    else:
        how = ("memory_limit caps virtual memory here (RLIMIT_AS: no memory cgroup can be made), and "
               "an IPython kernel needs about 768 MiB of it to start: raise it (1 GiB or more) or leave it unset")  # fmt: skip
    return (
        f"the kernel could not start with memory_limit={memory_limit / 2**20:g} MiB, which is "
        f"probably too small ({cause}). {how}"
    )
