"""The ``kernelexec`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._cli_run import add_run_command
from ._errors import KernelexecError
from ._result import ExecutionResult
from ._session import Session

# Exit statuses of `kernelexec exec`, as timeout(1) and a SIGKILLed process report them.
EXIT_STATUS = {"ok": 0, "error": 1, "interrupted": 130, "timeout": 124, "died": 137}


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


if __name__ == "__main__":
    sys.exit(main())
