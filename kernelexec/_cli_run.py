"""``kernelexec run NOTEBOOK``: execute a notebook from the command line, with progress."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._errors import CellExecutionError
from ._result import EXIT_STATUS


def add_run_command(commands: Any) -> None:
    """Add the ``run`` subcommand to the CLI's subparsers."""
    run = commands.add_parser(
        "run",
        help="execute a notebook in a fresh kernel",
        description="Execute every code cell of NOTEBOOK in one fresh kernel, showing progress "
        "(a bar on a terminal, one line per cell otherwise). Exit status: 0 when every cell ran "
        "(or --allow-errors), 1 a cell raised, 124 a cell timed out, 137 the kernel died; the "
        "failing cell's traceback goes to stderr and OUT is written with outputs up to it.",
    )
    run.add_argument("notebook", metavar="NOTEBOOK", help="the .ipynb file to run")
    run.add_argument("-o", "--output", metavar="OUT", help="write the executed notebook here")
    run.add_argument("--timeout", type=float, metavar="S", help="time limit per cell in seconds (default: none)")
    run.add_argument("--allow-errors", action="store_true", help="record failing cells and go on")
    run.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="a parameter injected papermill-style after the cell tagged 'parameters' "
        "(VALUE: int, float, True/False/None, else a string); repeatable",
    )  # fmt: skip
    run.add_argument("--kernel", metavar="NAME", help="kernel spec name (default: the notebook's)")
    run.add_argument("--cwd", metavar="DIR", help="the kernel's working directory (default: the notebook's folder)")
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the notebook; report the failing cell and return the exit status."""
    from ._notebook import run_notebook  # nbformat, ZMQ, jupyter_client: not for --help
    from ._parameters import parse_cli_value

    parameters = {name: parse_cli_value(value) for name, value in args.parameter}
    started = time.monotonic()
    try:
        nb = run_notebook(
            args.notebook, output_path=args.output, timeout=args.timeout,
            allow_errors=args.allow_errors, parameters=parameters or None,
            kernel_name=args.kernel, cwd=args.cwd, progress=True,
        )  # fmt: skip
    except CellExecutionError as error:
        sys.stderr.write(
            f"\nkernelexec: cell {error.cell_index} failed ({error.result.status}): "
            f"{error.ename}: {error.evalue}\n\n{error.traceback}\n\n"
        )
        if args.output:
            sys.stderr.write(f"The notebook, with outputs up to this cell, is in {args.output}\n")
        return EXIT_STATUS.get(error.result.status, 1)
    except KeyboardInterrupt:
        saved = f"; the notebook so far is in {args.output}" if args.output else ""
        sys.stderr.write(f"\nkernelexec: interrupted{saved}\n")
        return EXIT_STATUS["interrupted"]
    ran = sum(1 for cell in nb.cells if cell.cell_type == "code" and cell.get("execution_count"))
    where = f"; written to {args.output}" if args.output else " (not saved: pass -o OUT to keep it)"
    print(f"{args.notebook}: {ran} cells ran in {time.monotonic() - started:.1f} s{where}")
    return 0
