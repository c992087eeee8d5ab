"""The ``kernelexec`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ._cli_run import add_run_command
from ._errors import KernelexecError
from ._result import EXIT_STATUS, ExecutionResult
from ._session import Session


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KernelexecError as error:
        print(f"kernelexec: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelexec", description="Run code in persistent Jupyter-kernel sessions."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_code = commands.add_parser(
        "exec",
        help="run code in a fresh kernel and print its result",
        description="Run CODE in a fresh kernel and print its output with a footer. Exit status: "
        "0 ok, 1 error, 124 timeout, 137 kernel died.",
    )
    run_code.add_argument("code", metavar="CODE", help="the code to run; - reads it from stdin")
    run_code.add_argument("--timeout", type=float, default=60.0, metavar="S", help="time limit in seconds (default 60)")
    run_code.add_argument("--cwd", metavar="DIR", help="the kernel's working directory")
    run_code.add_argument("--kernel", default="python3", metavar="NAME", help="kernel spec name (default python3)")
    run_code.set_defaults(handler=_exec)
    add_run_command(commands)
    _add_mcp_command(commands)
    return parser


def _exec(args: argparse.Namespace) -> int:
    code = sys.stdin.read() if args.code == "-" else args.code
    with Session(args.kernel, timeout=args.timeout, cwd=args.cwd) as session:
        result = session.execute(code)
    _print_result(result)
    return EXIT_STATUS[result.status]


def _print_result(result: ExecutionResult) -> None:
    sys.stdout.write(str(result))
    if not str(result).endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


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
        max_output_bytes=args.max_output_bytes, kernel_name=args.kernel,
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
