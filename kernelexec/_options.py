"""Session options: defaults and validation in one place, shared by every face of the API."""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from ._collector import OutputCallback
from ._env import InheritEnv, kernel_environment
from ._errors import InvalidArgument
from ._sandbox import Sandbox, check_available, check_cwd, sandbox_option

InputHandler = Callable[[str, bool], str]
Launch = Literal["auto", "fork", "spawn"]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class SessionOptions:
    """Everything a session is configured with; validated on construction.

    This is the one declaration of the options: ``Session``, ``AsyncSession``, the managers and
    ``run_notebook`` take them as keyword arguments and show them in their signatures.
    """

    kernel_name: str = "python3"
    timeout: float = 60.0
    interrupt_grace: float = 3.0
    startup_timeout: float = 60.0
    cwd: str | None = None
    env: Mapping[str, str | None] | None = None
    inherit_env: InheritEnv = "scrub"
    startup_code: str | None = None
    max_output_bytes: int = 1_000_000
    memory_limit: int | None = None
    max_processes: int | None = None
    on_output: OutputCallback | None = None
    spill_dir: str | None = None
    # The kernel drops the middle of a flood itself (local Python kernels): off, every byte
    # crosses the wire and the collector alone bounds it (``kernelexec exec`` shows it all).
    bound_output_in_kernel: bool = True
    input_handler: InputHandler | None = None
    gateway_url: str | None = None
    gateway_token: str | None = field(default=None, repr=False)
    gateway_headers: Mapping[str, str] | None = field(default=None, repr=False)
    gateway_validate_cert: bool = True
    # Forked from a template where possible; KERNELEXEC_LAUNCHER sets another default for the
    # process (the test suite runs its core tests on both).
    launcher: Launch = field(default_factory=lambda: os.environ.get("KERNELEXEC_LAUNCHER", "auto"))  # type: ignore[assignment]
    keep_state_on_restart: bool = False
    max_checkpoints: int = 16
    # True or a Sandbox: the kernel runs in a bubblewrap sandbox (see _sandbox); None after
    # validation when off. KERNELEXEC_SANDBOX=1 makes True the default for the process.
    sandbox: bool | Sandbox | None = field(default_factory=lambda: os.environ.get("KERNELEXEC_SANDBOX") == "1" or None)

    def __post_init__(self) -> None:
        if not isinstance(self.kernel_name, str) or not self.kernel_name:
            raise InvalidArgument(f"kernel_name must be a non-empty string, not {self.kernel_name!r}")
        for name in ("timeout", "interrupt_grace", "startup_timeout"):
            _check_seconds(name, getattr(self, name))
        if not isinstance(self.max_output_bytes, int) or self.max_output_bytes < 2:
            raise InvalidArgument(
                f"max_output_bytes must be an int of at least 2, not {self.max_output_bytes!r}"
            )
        if self.memory_limit is not None and (
            not isinstance(self.memory_limit, int) or self.memory_limit <= 0
        ):
            raise InvalidArgument(
                f"memory_limit must be a positive number of bytes or None, not {self.memory_limit!r}"
            )
        if self.max_processes is not None and (
            not isinstance(self.max_processes, int) or isinstance(self.max_processes, bool)
            or self.max_processes < 16
        ):
            raise InvalidArgument(
                "max_processes must be an int of at least 16 (the kernel's own threads count) or "
                f"None, not {self.max_processes!r}"
            )
        for name in ("cwd", "spill_dir"):
            path = getattr(self, name)
            if path is not None:
                path = os.fspath(path)
                if not os.path.isdir(path):
                    raise InvalidArgument(f"{name} {path!r} is not an existing directory")
                _check_writable(name, path)
                object.__setattr__(self, name, os.path.abspath(path))
        if not isinstance(self.bound_output_in_kernel, bool):
            raise InvalidArgument(
                f"bound_output_in_kernel must be True or False, not {self.bound_output_in_kernel!r}"
            )
        if self.startup_code is not None and not isinstance(self.startup_code, str):
            raise InvalidArgument("startup_code must be a string of code or None")
        for name in ("on_output", "input_handler"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise InvalidArgument(f"{name} must be callable or None, not {value!r}")
        self.kernel_env()  # validates inherit_env and env now, not at the first start
        _check_gateway(self)
        _check_forks(self)
        _check_sandbox(self)

    def kernel_env(self) -> dict[str, str]:
        """The environment the kernel starts with (see ``kernel_environment``)."""
        return kernel_environment(self.inherit_env, self.env)

    def with_changes(self, **changes: Any) -> SessionOptions:
        return replace(self, **changes)

    def kernel_key(self) -> tuple[Any, ...]:
        """What a prepared kernel depends on: sessions with equal keys can share a warm pool."""
        env = tuple(sorted((self.env or {}).items()))
        return (
            self.kernel_name, self.cwd, env, self.inherit_env, self.startup_code,
            self.memory_limit, self.max_processes, self.max_output_bytes, self.gateway_url,
            self.gateway_token,
            tuple(sorted((self.gateway_headers or {}).items())), self.gateway_validate_cert,
            self.launcher, self.sandbox,
        )  # fmt: skip


def session_options(caller: str, kernel_name: str, options: Mapping[str, Any]) -> SessionOptions:
    """``SessionOptions`` from a face's keyword arguments, naming an unknown one clearly."""
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(
            f"{caller}() got unknown option(s) {', '.join(map(repr, unknown))}; the options are: "
            f"{', '.join(sorted(OPTION_NAMES))}"
        )
    return SessionOptions(kernel_name=kernel_name, **options)


def with_options_signature(face: F) -> F:
    """Show the session options in the signature of ``face`` (for ``help()``, IDEs and
    ``inspect``), in place of its ``**options``. The options stay declared once, above."""
    target = face.__init__ if isinstance(face, type) else face
    own = inspect.signature(target)
    params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD and not p.name.startswith("_")]
    taken = {p.name for p in params}
    params += [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                          default=f.default_factory() if f.default is dataclasses.MISSING else f.default)  # type: ignore[misc]
        for f in dataclasses.fields(SessionOptions) if f.name not in taken
    ]  # fmt: skip
    target.__signature__ = own.replace(parameters=params)
    return face


def check_timeout(timeout: float | None, default: float) -> float:
    """The per-call timeout: ``default`` when ``None``, validated otherwise."""
    if timeout is None:
        return default
    _check_seconds("timeout", timeout)
    return float(timeout)


def _check_writable(name: str, path: str) -> None:
    """Code expects to write files where it runs; say so now rather than at the first write."""
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise InvalidArgument(
            f"{name} {path!r} is not writable ({error.strerror}); pass a directory the kernel can "
            "write to"
        ) from None


def _check_seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or math.isnan(value)
        or value <= 0
    ):
        raise InvalidArgument(f"{name} must be a positive number of seconds, not {value!r}")


def _check_forks(options: SessionOptions) -> None:
    if options.launcher not in ("auto", "fork", "spawn"):
        raise InvalidArgument(f"launcher must be 'auto', 'fork' or 'spawn', not {options.launcher!r}")
    if not isinstance(options.keep_state_on_restart, bool):
        raise InvalidArgument("keep_state_on_restart must be True or False")
    if not isinstance(options.max_checkpoints, int) or isinstance(options.max_checkpoints, bool) or options.max_checkpoints < 1:
        raise InvalidArgument(f"max_checkpoints must be an int of at least 1, not {options.max_checkpoints!r}")
    if options.gateway_url is not None and (options.launcher == "fork" or options.keep_state_on_restart):
        raise InvalidArgument(
            "gateway kernels cannot be forked: leave launcher and keep_state_on_restart at their "
            "defaults with a gateway_url"
        )


def _check_sandbox(options: SessionOptions) -> None:
    sandbox = sandbox_option(options.sandbox)
    object.__setattr__(options, "sandbox", sandbox)
    if sandbox is None:
        return
    if options.gateway_url is not None:
        raise InvalidArgument("sandbox applies to local kernels only; a gateway kernel runs where the gateway puts it")
    if options.cwd is not None:
        check_cwd(options.cwd)
    if options.launcher == "spawn" and options.keep_state_on_restart:
        raise InvalidArgument(
            "keep_state_on_restart needs copies of the kernel, which a sandboxed kernel spawned with "
            "launcher='spawn' cannot make (they would die with it): leave launcher at its default"
        )
    check_available()


def _check_gateway(options: SessionOptions) -> None:
    """Gateway options: a usable URL, string credentials, and no option only a local kernel has."""
    url = options.gateway_url
    if url is None:
        if options.gateway_token is not None or options.gateway_headers:
            raise InvalidArgument("gateway_token and gateway_headers need a gateway_url")
        return
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            f"gateway_url must be an http:// or https:// URL such as 'http://host:8888', not {url!r}"
        )
    if options.gateway_token is not None and not isinstance(options.gateway_token, str):
        raise InvalidArgument("gateway_token must be a string or None")
    headers = options.gateway_headers or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in headers.items()
    ):
        raise InvalidArgument("gateway_headers must be a mapping of header names to string values")
    if not isinstance(options.gateway_validate_cert, bool):
        raise InvalidArgument("gateway_validate_cert must be True or False")
    for name in ("cwd", "max_processes"):
        if getattr(options, name) is not None:
            raise InvalidArgument(
                f"{name} applies to local kernels only; a gateway kernel's working directory and "
                "process limits are the gateway's configuration (or use startup_code, e.g. "
                "os.chdir)"
            )


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(SessionOptions)) - {"kernel_name"}
