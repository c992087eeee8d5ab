"""A Model Context Protocol server that gives agents stateful Python sessions (``kernelexec mcp``).

Built on the official ``mcp`` SDK (extra ``mcp``), served over stdio and backed by an
``AsyncSessionManager``, so new and restarted sessions come from a warm pool of kernels. Tools:

- ``execute(session, code, timeout=None)``: run code in a named session, created on first use.
  Returns what the code printed, its result and traceback with a footer, plus images it displayed
  (as MCP image content). A timeout or a kernel death is a normal result the model reads.
- ``list_sessions()``, ``restart_session(session)``, ``close_session(session)``.
- ``export_notebook(session, path)``: save the session's history as a Jupyter notebook.

Misuse (an unknown session, a bad name, too many sessions, a timeout over the limit, a kernel
that cannot start) becomes a tool error whose message says what to do.

>>> server = create_server(root="/work/project", timeout=60, max_sessions=8)
>>> server.run("stdio")
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ImageContent, TextContent
from pydantic import Field

from .._errors import KernelexecError, UnknownSession
from .._manager import AsyncSessionManager
from .._record import write_notebook
from .._result import ExecutionResult
from .._session import AsyncSession

_SESSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

INSTRUCTIONS = """\
Run Python code in persistent Jupyter kernels. Each named session keeps its variables, imports and
working directory between `execute` calls, like a notebook. A call that runs past its time limit
is interrupted (the session's state is kept unless the kernel had to be restarted; the result
says which); a call that crashes the kernel restarts it with empty state. Use `list_sessions` to
see sessions, `restart_session` for a clean slate, `fork_session` to copy a session before trying
something risky (the copy has the same variables; the original stays as it was), `close_session`
when done, and `export_notebook` to save a session's history as a notebook."""

SessionName = Annotated[
    str,
    Field(description="Session name (letters, digits, '_', '.', '-'); created on first use."),
]


@dataclass(frozen=True)
class ServerSettings:
    """How the server runs its sessions.

    ``root`` is the working directory of every session, or with ``session_dirs`` the directory
    under which each session gets its own (``root/<session>``, created on first use; the warm
    pool then cannot serve them, as its kernels start in ``root``). ``timeout`` is the default
    time limit of one call and ``max_timeout`` the most a call may ask for. ``session_options``
    are further ``kernelexec.Session`` options (``inherit_env``, ``env``, ``memory_limit``, ...).
    """

    root: str = "."
    session_dirs: bool = False
    timeout: float = 60.0
    max_timeout: float = 600.0
    pool_size: int = 1
    max_sessions: int = 16
    idle_timeout: float | None = 3600.0
    session_options: Mapping[str, Any] = field(default_factory=dict)


class KernelTools:
    """The tools' logic over an ``AsyncSessionManager``, free of MCP types but the content."""

    def __init__(self, manager: AsyncSessionManager, settings: ServerSettings) -> None:
        self.manager = manager
        self.settings = settings
        self._creating: dict[str, asyncio.Lock] = {}

    async def execute(
        self, session: str, code: str, timeout: float | None = None
    ) -> list[TextContent | ImageContent]:
        """Run ``code`` in ``session`` (created on first use): the text, then any images."""
        if timeout is not None and not 0 < timeout <= self.settings.max_timeout:
            raise ToolError(
                f"timeout must be more than 0 and at most {self.settings.max_timeout:g} seconds "
                f"(the server's --max-timeout), not {timeout:g}"
            )
        live = await self._get_or_create(session)
        result = await _call(live.execute(code, timeout=timeout))
        return _content(result)

    def list_sessions(self) -> dict[str, Any]:
        """Every live session with its status and counters."""
        now = time.time()
        return {
            "sessions": [
                {
                    "session": info.id,
                    "status": info.status,
                    "executions": info.executions,
                    "timeouts": info.timeouts,
                    "restarts": info.restarts,
                    "deaths": info.deaths,
                    "idle_seconds": round(now - info.last_used, 1),
                    "age_seconds": round(now - info.created, 1),
                }
                for info in self.manager.list()
            ],
            "max_sessions": self.manager.max_sessions,
        }

    async def restart_session(self, session: str) -> str:
        live = self._existing(session)
        await _call(live.restart())  # a call in flight ends at once, with status "died"
        return f"Session {session!r} restarted: it runs a fresh kernel, all variables are gone."

    async def fork_session(self, session: str, new_session: str) -> str:
        self._existing(session)
        _check_name(new_session)
        await _call(self.manager.fork(session, new_session))
        return (
            f"Session {new_session!r} is a copy of {session!r}: the same variables, imports and "
            "working directory; the two are independent from now on."
        )

    async def close_session(self, session: str) -> str:
        self._existing(session)
        await self.manager.close(session)  # a call in flight ends at once, with status "died"
        return f"Session {session!r} closed; executing in it again starts a new, empty session."

    async def export_notebook(self, session: str, path: str) -> str:
        live = self._existing(session)
        directory = self._session_dir(session)
        target = _path_inside(directory, path)
        shown = os.path.normpath(os.path.join(directory, path))
        if not os.path.isdir(os.path.dirname(target)):
            raise ToolError(f"cannot write {shown!r}: its directory does not exist")
        try:
            notebook = live.notebook
            write_notebook(notebook, target)
        except OSError as error:
            raise ToolError(f"cannot write {shown!r}: {error.strerror}") from None
        cells = len(notebook.cells)
        return f"Wrote {cells} cell{'s' if cells != 1 else ''} of session {session!r} to {shown}"

    async def _get_or_create(self, session: str) -> AsyncSession:
        _check_name(session)
        if self._known(session):
            return await _call(self.manager.session(session))
        # Two first calls to one new session must create it once. The lock matters only while
        # the session does not exist, so it is dropped after each creation, not kept per name:
        # a caller still waiting for it finds the session created and just gets it.
        lock = self._creating.setdefault(session, asyncio.Lock())
        try:
            async with lock:
                if self._known(session):
                    return await _call(self.manager.session(session))
                options: dict[str, Any] = {}
                if self.settings.session_dirs:
                    os.makedirs(self._session_dir(session), exist_ok=True)
                    options["cwd"] = self._session_dir(session)
                return await _call(self.manager.session(session, **options))
        finally:
            if self._creating.get(session) is lock:
                del self._creating[session]

    def _existing(self, session: str) -> AsyncSession:
        """The session, at once, even while it runs code (so that it can be stopped)."""
        _check_name(session)
        try:
            return self.manager.get(session)
        except UnknownSession:
            names = ", ".join(repr(info.id) for info in self.manager.list()) or "none"
            raise ToolError(
                f"there is no session named {session!r} (sessions: {names}); `execute` creates one"
            ) from None
        except KernelexecError as error:  # the server is shutting down
            raise ToolError(str(error)) from error

    def _known(self, session: str) -> bool:
        try:
            self.manager.get(session)
        except KernelexecError:  # unknown, or the manager closed (session() then says so)
            return False
        return True

    def _session_dir(self, session: str) -> str:
        root = os.path.abspath(self.settings.root)
        return os.path.join(root, session) if self.settings.session_dirs else root


def create_server(settings: ServerSettings | None = None, **changes: Any) -> MCPServer:
    """An MCP server with kernelexec's tools; its sessions live as long as the server runs.

    ``changes`` override fields of ``settings`` (see ``ServerSettings``); unknown names are
    ``kernelexec.Session`` options.
    """
    settings = _settings(settings or ServerSettings(), changes)
    tools: dict[str, KernelTools] = {}

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[None]:
        manager = AsyncSessionManager(
            # pooled kernels start in root: with a directory per session they would serve none
            pool_size=0 if settings.session_dirs else settings.pool_size,
            max_sessions=settings.max_sessions,
            idle_timeout=settings.idle_timeout,
            **_manager_session_options(settings),
        )
        tools["kernel"] = KernelTools(manager, settings)
        try:
            async with manager:
                yield
        finally:
            tools.clear()

    server: MCPServer = MCPServer(
        "kernelexec", instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING"
    )

    @server.tool(structured_output=False)
    async def execute(
        session: SessionName,
        code: Annotated[str, Field(description="Python code; the last expression's value is shown.")],
        timeout: Annotated[
            float | None, Field(description="Time limit in seconds for this call (default: the server's).")
        ] = None,
    ) -> list[TextContent | ImageContent]:
        """Run Python code in a persistent session and return its output, result or traceback,
        with a footer saying how long it took; images the code displays come as images."""
        return await tools["kernel"].execute(session, code, timeout)

    @server.tool()
    def list_sessions() -> dict[str, Any]:
        """List the live sessions: status, number of executions, timeouts, restarts, idle time."""
        return tools["kernel"].list_sessions()

    @server.tool()
    async def restart_session(session: SessionName) -> str:
        """Restart a session's kernel: a clean slate, all its variables are lost."""
        return await tools["kernel"].restart_session(session)

    @server.tool()
    async def fork_session(
        session: SessionName,
        new_session: Annotated[str, Field(description="Name of the copy (must not exist yet).")],
    ) -> str:
        """Copy a session (its variables, imports, working directory) into a new one, in
        milliseconds: try something risky in the copy and keep the original as it was."""
        return await tools["kernel"].fork_session(session, new_session)

    @server.tool()
    async def close_session(session: SessionName) -> str:
        """Close a session and free its kernel."""
        return await tools["kernel"].close_session(session)

    @server.tool()
    async def export_notebook(
        session: SessionName,
        path: Annotated[
            str, Field(description="Where to write the .ipynb file; relative to the session's directory.")
        ],
    ) -> str:
        """Save everything run in a session so far as a Jupyter notebook (code cells with outputs)."""
        return await tools["kernel"].export_notebook(session, path)

    return server


def serve(settings: ServerSettings | None = None, **changes: Any) -> None:
    """Run the server on stdin/stdout until the client disconnects; closes every session."""
    create_server(settings, **changes).run("stdio")


def _settings(settings: ServerSettings, changes: dict[str, Any]) -> ServerSettings:
    known = set(ServerSettings.__dataclass_fields__)
    own = {name: value for name, value in changes.items() if name in known}
    extra = {name: value for name, value in changes.items() if name not in known}
    options = {**settings.session_options, **own.pop("session_options", {}), **extra}
    settings = ServerSettings(**{**vars(settings), **own, "session_options": options})
    if not os.path.isdir(settings.root):
        # An MCP host shows the client only "Connection closed"; the CLI prints this on stderr,
        # which hosts log. A relative root is resolved against the directory the host started
        # the server in, which is often not the one the user thinks of.
        where = "" if os.path.isabs(settings.root) else f" (resolved to {os.path.abspath(settings.root)})"
        raise KernelexecError(
            f"the root directory {settings.root!r}{where} does not exist or is not a directory; "
            "create it, or pass an existing one (--root)"
        )
    return settings


def _manager_session_options(settings: ServerSettings) -> dict[str, Any]:
    options = dict(settings.session_options)
    options.setdefault("timeout", settings.timeout)
    options.setdefault("cwd", os.path.abspath(settings.root))
    return options


def _path_inside(directory: str, path: str) -> str:
    """``path`` (relative) resolved inside ``directory``, symlinks followed; a ``ToolError`` when
    it is absolute or leads out (``..``, or a symlink anywhere on the way pointing outside).

    This confines the tool's argument only: code running in a session can write anywhere its
    user can, unless the server runs with ``--sandbox`` (``sandbox=True``).
    """
    if os.path.isabs(path) or path.startswith("~"):
        raise ToolError(
            f"path must be relative to the session's directory ({directory}), not {path!r}"
        )
    base = os.path.realpath(directory)
    target = os.path.realpath(os.path.join(base, path))
    if os.path.commonpath([base, target]) != base:
        raise ToolError(
            f"path {path!r} leads outside the session's directory ({directory}), to {target}; "
            "give a path inside it"
        )
    return target


def _check_name(session: str) -> None:
    if not _SESSION_NAME.fullmatch(session):
        raise ToolError(
            f"invalid session name {session!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


async def _call(awaitable: Any) -> Any:
    """Await a kernelexec call, turning its errors into tool errors the model can read."""
    try:
        return await awaitable
    except KernelexecError as error:
        raise ToolError(str(error)) from error


def _content(result: ExecutionResult) -> list[TextContent | ImageContent]:
    """The result's text, then its images. An output sent as an image is left out of the text,
    which would only repeat its ``text/plain`` (``<IPython.core.display.Image object>``)."""
    images: list[ImageContent] = []
    as_text = []
    for output in result.outputs:
        image = _image(output)
        if image is None:
            as_text.append(output)
        else:
            images.append(image)
    text = str(replace(result, outputs=as_text)) if images else str(result)
    return [TextContent(type="text", text=text), *images]


def _image(output: Any) -> ImageContent | None:
    if output.output_type not in ("display_data", "execute_result"):
        return None
    for mime in _IMAGE_TYPES:
        data = output.get("data", {}).get(mime)
        if isinstance(data, str):
            return ImageContent(type="image", data="".join(data.split()), mime_type=mime)
    return None


__all__ = ["INSTRUCTIONS", "KernelTools", "ServerSettings", "create_server", "serve"]
