"""``kernelexec run NOTEBOOK``: execute a notebook from the command line, with progress.

Ctrl-C, SIGTERM and SIGHUP stop the run the same orderly way: the running cell is interrupted,
the notebook is written with every output so far, the kernel is shut down, and the exit status
is 128 + the signal's number (130, 143, 129).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from ._cli_exec import sandboxed
from ._errors import CellExecutionError
from ._result import EXIT_STATUS

STDIO = "-"
STOPPING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Stopped(KeyboardInterrupt):
    """A signal asked the run to stop; it unwinds the run as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def add_run_command(commands: Any) -> None:
    """Add the ``run`` subcommand to the CLI's subparsers."""
    run = commands.add_parser(
        "run",
        help="execute a notebook in a fresh kernel",
        description="Execute every code cell of NOTEBOOK in one fresh kernel, showing progress "
        "(a bar on a terminal, one line per cell otherwise). OUT is written as the run goes (after "
        "every cell, during long ones) and in every case at the end, with papermill's run record "
        "(metadata.papermill) and, if a cell failed, papermill's error banner. Exit status: 0 every "
        "cell ran (or --allow-errors, or a cell called sys.exit(0)), 1 a cell raised, 2 bad "
        "arguments or a file that is not a notebook, 124 a cell timed out, 137 the kernel died, "
        "130/143/129 stopped by Ctrl-C/SIGTERM/SIGHUP (OUT keeps the outputs so far).",
    )
    run.add_argument("notebook", metavar="NOTEBOOK", help="the .ipynb file to run; - reads it from stdin")
    run.add_argument("-o", "--output", metavar="OUT", help="write the executed notebook here; - writes it to stdout")
    run.add_argument("--timeout", type=float, metavar="S", help="time limit per cell in seconds (default: none)")
    run.add_argument("--allow-errors", action="store_true", help="record failing cells and go on")
    run.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="a parameter injected papermill-style after the cell tagged 'parameters' "
        "(VALUE: int, float, True/False/None, else a string); repeatable, wins over -f",
    )  # fmt: skip
    run.add_argument(
        "-f", "--parameters-file", action="append", default=[], metavar="FILE",
        help="parameters from a YAML or JSON file of name: value pairs; repeatable",
    )  # fmt: skip
    run.add_argument("--kernel", metavar="NAME", help="kernel spec name (default: the notebook's)")
    run.add_argument("--cwd", metavar="DIR", help="the kernel's working directory (default: the notebook's folder)")
    run.add_argument(
        "--autosave-cell-every", type=float, default=30.0, metavar="S",
        help="save OUT at most every S seconds during a long cell (default 30; 0: only after each cell)",
    )  # fmt: skip
    run.add_argument("--sandbox", action="store_true", help="run the kernel in a sandbox: no network, only cwd writable, the owner's files and processes invisible")
    run.add_argument("--no-papermill-record", action="store_true", help="leave out papermill's run record and error banner")
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the notebook; report the failing cell and return the exit status."""
    from ._notebook_io import notebook_from_text  # nbformat, ZMQ, jupyter_client: not for --help
    from ._parameters import parse_cli_value, read_parameters_file

    parameters: dict[str, Any] = {}
    for path in args.parameters_file:
        parameters.update(read_parameters_file(path))
    parameters.update((name, parse_cli_value(value)) for name, value in args.parameter)
    source: Any = args.notebook
    if source == STDIO:
        source = notebook_from_text(sys.stdin.read(), "the notebook on stdin")
    if args.output != STDIO:
        with _signals_stop_the_run():
            return _run(args, source, args.output, parameters)
    # To stdout: written to a file as the run goes, as for -o OUT, and copied out once at the end.
    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "out.ipynb")
        try:
            with _signals_stop_the_run():
                return _run(args, source, output, parameters)
        finally:
            _copy_to_stdout(output, args.notebook)


def _run(args: argparse.Namespace, source: Any, output: str | None, parameters: dict[str, Any]) -> int:
    from ._notebook import run_notebook  # nbformat, ZMQ, jupyter_client: not for --help

    started = time.monotonic()
    report = sys.stderr if args.output == STDIO else sys.stdout
    try:
        nb = run_notebook(
            source, output_path=output, timeout=args.timeout, allow_errors=args.allow_errors,
            parameters=parameters or None, kernel_name=args.kernel, cwd=args.cwd, progress=True,
            record_papermill=not args.no_papermill_record,
            autosave_cell_every=args.autosave_cell_every, **sandboxed(args),
        )  # fmt: skip
    except CellExecutionError as error:
        sys.stderr.write(
            f"\nkernelexec: cell {error.cell_index} failed ({error.result.status}): "
            f"{error.ename}: {error.evalue}\n\n{error.traceback}\n\n"
        )
        if args.output:
            sys.stderr.write(f"The notebook, with outputs up to this cell, is in {args.output}\n")
        return EXIT_STATUS.get(error.result.status, 1)
    except KeyboardInterrupt as stop:
        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        saved = f"; the notebook so far is in {args.output}" if args.output else ""
        sys.stderr.write(f"\nkernelexec: stopped by {signal.Signals(signum).name}{saved}\n")
        return 128 + signum
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    ran = sum(1 for cell in code_cells if cell.get("execution_count"))
    where = f"; written to {args.output}" if args.output else " (not saved: pass -o OUT to keep it)"
    ended = _ended_by_system_exit(code_cells)
    report.write(f"{args.notebook}: {ran} cells ran in {time.monotonic() - started:.1f} s{ended}{where}\n")
    return 0


@contextlib.contextmanager
def _signals_stop_the_run() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Stopped`` in the main thread, as Ctrl-C raises
    KeyboardInterrupt, so the run's ``finally`` writes the notebook and shuts the kernel down.
    Once stopping, more of them are ignored: the clean-up is bounded and must not be cut."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for number in STOPPING_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        raise Stopped(signum)

    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield
        return
    previous = {number: signal.signal(number, stop) for number in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _ended_by_system_exit(code_cells: list[Any]) -> str:
    ran = [cell for cell in code_cells if cell.get("execution_count")]
    last = ran[-1].outputs if ran else []
    if any(output.get("output_type") == "error" and output.get("ename") == "SystemExit" for output in last):
        return " (the last one ended the run with SystemExit)"
    return ""


def _copy_to_stdout(path: str, input_name: str) -> None:
    """The notebook the run wrote, to stdout, its papermill record naming - as papermill's does."""
    if not os.path.exists(path):
        return
    import nbformat

    nb = nbformat.read(path, as_version=4)
    record = nb.metadata.get("papermill")
    if isinstance(record, dict) and "output_path" in record:
        record["output_path"] = STDIO
        if input_name == STDIO:
            record["input_path"] = STDIO
    sys.stdout.write(nbformat.writes(nb) + "\n")
    sys.stdout.flush()
