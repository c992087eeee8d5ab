"""The ``kernelexec`` command line.

Only the parser is built at start-up: each command imports what it runs (sessions, nbformat,
the MCP SDK) when it runs, so ``kernelexec --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from ._cli_exec import add_exec_command, sandboxed
from ._cli_run import add_run_command
from ._errors import KernelexecError

EXIT_STATUSES = """\
exit status:
  0    the code ran (every cell, or --allow-errors); the MCP server stopped normally
  1    the code raised (exec), a cell failed (run)
  2    kernelexec could not run it: a bad argument or file, an unknown kernel, a kernel that
       cannot start (the message says why)
  124  the time limit passed (--timeout)
  130  interrupted (Ctrl-C, SIGINT)
  137  the kernel died (killed, out of memory, os._exit)
  143  kernelexec was terminated (SIGTERM)
"""

# The library's messages name its parameters; on the command line they are flags.
_FLAG_FOR_PARAMETER = {"as kernel_name": "with --kernel"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see ``EXIT_STATUSES``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KernelexecError as error:
        print(f"kernelexec: {_with_flags(str(error))}", file=sys.stderr)
        return 2


def _with_flags(message: str) -> str:
    for parameter, flag in _FLAG_FOR_PARAMETER.items():
        message = message.replace(parameter, flag)
    return message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelexec",
        description="Run code in persistent Jupyter-kernel sessions.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kernelexec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_exec_command(commands)
    add_run_command(commands)
    _add_mcp_command(commands)
    return parser


def _add_mcp_command(commands: Any) -> None:
    serve = commands.add_parser(
        "mcp",
        help="serve persistent sessions to agents over the Model Context Protocol (stdio)",
        description="A Model Context Protocol server on stdin/stdout with tools to execute code in "
        "named persistent sessions, list, restart and close them, and export one as a notebook. "
        "Needs the mcp extra: pip install 'kernelexec[mcp]'.",
    )
    serve.add_argument("--root", default=argparse.SUPPRESS, metavar="DIR", help="working directory of the sessions (default: the current one)")
    serve.add_argument("--session-dirs", action="store_true", help="give each session its own directory DIR/<session>")
    serve.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="S", help="default time limit of one call (default 60)")
    serve.add_argument("--max-timeout", type=float, default=argparse.SUPPRESS, metavar="S", help="the most a call may ask for (default 600)")
    serve.add_argument("--max-sessions", type=int, default=argparse.SUPPRESS, metavar="N", help="live sessions at most (default 16)")
    serve.add_argument("--idle-timeout", type=float, default=argparse.SUPPRESS, metavar="S", help="close sessions idle this long (default 3600)")
    serve.add_argument("--pool-size", type=int, default=argparse.SUPPRESS, metavar="N", help="pre-started kernels kept ready (default 1)")
    serve.add_argument("--inherit-env", choices=["scrub", "all", "none"], default="scrub",
                       help="environment for kernels: ours minus secrets (default), all of it, or a minimal base")
    serve.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set a variable in the kernels (repeatable)")
    serve.add_argument("--memory-limit", type=_bytes, metavar="SIZE", help="memory cap per kernel, e.g. 2G or 512M")
    serve.add_argument("--max-processes", type=int, metavar="N", help="processes/threads per kernel at most")
    serve.add_argument("--max-output-bytes", type=int, default=100_000, metavar="N", help="output kept per call (default 100000)")
    serve.add_argument("--sandbox", action="store_true", help="run the kernel in a sandbox: no network, only cwd writable, the owner's files and processes invisible")
    serve.add_argument("--kernel", default="python3", metavar="NAME", help="kernel spec name (default python3)")
    serve.set_defaults(handler=_mcp)


def _mcp(args: argparse.Namespace) -> int:
    try:
        from .integrations.mcp import serve
    except ImportError as error:
        raise KernelexecError(f"kernelexec mcp needs the mcp package ({error}); pip install 'kernelexec[mcp]'") from None
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise KernelexecError(f"--env takes NAME=VALUE, not {item!r}")
        env[name] = value
    # The server's own defaults (ServerSettings) apply to what the command line leaves out.
    given = {
        name: getattr(args, name)
        for name in ("root", "timeout", "max_timeout", "max_sessions", "idle_timeout", "pool_size")
        if hasattr(args, name)
    }
    serve(
        **given, session_dirs=args.session_dirs,
        inherit_env={"scrub": "scrub", "all": True, "none": False}[args.inherit_env], env=env or None,
        memory_limit=args.memory_limit, max_processes=args.max_processes,
        max_output_bytes=args.max_output_bytes, kernel_name=args.kernel, **sandboxed(args),
    )  # fmt: skip
    return 0


def _bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use bytes, or K, M, G)") from None


if __name__ == "__main__":
    sys.exit(main())
