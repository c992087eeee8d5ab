"""``kernelexec exec CODE``: run a snippet in a fresh kernel, its output shown as it is printed.

The code's stdout (and the text of its results, displays and traceback) goes to our stdout and
its stderr to our stderr, as the kernel sends them; the footer follows on stdout. On a terminal
that is exactly ``str(result)``. Ctrl-C interrupts the code: exit status 130, what was printed,
and one line saying so.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import math
import os
import select
import signal
import sys
import termios
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._errors import KernelexecError
from ._result import EXIT_STATUS, output_text

if TYPE_CHECKING:
    from nbformat import NotebookNode

    from ._result import ExecutionResult
    from ._session import Session

STDIN_HINT = (
    "kernelexec: the code asked for input; pass --stdin to answer input() from the terminal"
)


def add_exec_command(commands: Any) -> None:
    """Add the ``exec`` subcommand to the CLI's subparsers."""
    run_code = commands.add_parser(
        "exec",
        help="run code in a fresh kernel, showing its output as it is printed",
        description="Run CODE in a fresh kernel. Its output appears as it is printed (stdout to "
        "stdout, stderr to stderr), then a footer with the time taken. Ctrl-C interrupts the "
        "code. Exit status: 0 ok, 1 the code raised, 2 kernelexec could not run it, 124 timeout, "
        "130 interrupted, 137 the kernel died.",
    )
    run_code.add_argument("code", metavar="CODE", help="the code to run; - reads it from stdin")
    run_code.add_argument("--timeout", type=float, default=60.0, metavar="S", help="time limit in seconds (default 60)")
    run_code.add_argument("--cwd", metavar="DIR", help="the kernel's working directory")
    run_code.add_argument("--kernel", default="python3", metavar="NAME", help="kernel spec name (default python3)")
    run_code.add_argument("--stdin", action="store_true", help="answer the code's input() and getpass() from this terminal")
    run_code.add_argument("--sandbox", action="store_true", help="run the kernel in a sandbox: no network, only cwd writable, the owner's files and processes invisible")
    run_code.set_defaults(handler=exec_command)


def sandboxed(args: argparse.Namespace) -> dict[str, bool]:
    """``--sandbox`` as an option: given only when set (KERNELEXEC_SANDBOX=1 may set the default)."""
    return {"sandbox": True} if args.sandbox else {}


def exec_command(args: argparse.Namespace) -> int:
    """Run the code, streaming its output; return the exit status."""
    from ._session import Session  # ZMQ, jupyter_client, nbformat: not for --help

    if args.stdin and args.code == "-":
        raise KernelexecError("--stdin cannot be used with CODE '-': stdin holds the code")
    code = sys.stdin.read() if args.code == "-" else args.code
    printer = OutputPrinter()
    wake_read, wake_write = os.pipe()
    answer = TerminalInput(wake_read) if args.stdin else None
    result: ExecutionResult | None = None
    try:
        with Session(
            args.kernel, timeout=args.timeout, cwd=args.cwd, input_handler=answer, **sandboxed(args),
            bound_output_in_kernel=False,  # every byte is shown, not only what the result keeps
        ) as session:
            with _interrupt_on_sigint(session, printer, wake_write):
                if answer is not None:
                    answer.deadline = time.monotonic() + args.timeout
                result = session.execute(code, on_output=printer)
    except KeyboardInterrupt:  # a second Ctrl-C, or one while the kernel started or stopped
        pass
    finally:
        os.close(wake_read)
        os.close(wake_write)
    if result is None or (printer.interrupted and result.status == "interrupted"):
        printer.end_line()
        took = f" after {result.exec_time:.1f} s" if result is not None else ""
        sys.stderr.write(f"kernelexec: interrupted{took}\n")
        return EXIT_STATUS["interrupted"]
    printer.end_line()
    footer = [line for line in result.footer_lines() if not line.startswith("Output truncated")]
    sys.stdout.write("\n".join(footer) + "\n")  # all the output was shown: no truncation line
    sys.stdout.flush()
    if not args.stdin and result.error is not None and result.error.ename == "StdinNotImplementedError":
        sys.stderr.write(STDIN_HINT + "\n")
    return EXIT_STATUS[result.status]


class OutputPrinter:
    """The ``on_output`` callback: writes each output as it arrives, flushed at once.

    After Ctrl-C (``interrupted``), the kernel's ``KeyboardInterrupt`` traceback is not shown:
    the user knows, and one line says so at the end.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self._at_line_start = True

    def __call__(self, output: NotebookNode) -> None:
        if self.interrupted and output.output_type == "error" and output.ename == "KeyboardInterrupt":
            return
        text = output_text(output)
        if not text:
            return
        is_stderr = output.output_type == "stream" and output.name == "stderr"
        stream = sys.stderr if is_stderr else sys.stdout
        stream.write(text)
        stream.flush()
        self._at_line_start = text.endswith("\n")

    def end_line(self) -> None:
        """End a last line the code left open, as ``str(result)`` does before its footer."""
        if not self._at_line_start:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._at_line_start = True


@contextlib.contextmanager
def _interrupt_on_sigint(session: Session, printer: OutputPrinter, wake_fd: int) -> Iterator[None]:
    """The first Ctrl-C interrupts the code (the call then ends as ``interrupted``); a second
    one raises ``KeyboardInterrupt`` as usual."""
    interrupter: list[threading.Thread] = []

    def interrupt_the_code(signum: int, frame: Any) -> None:
        printer.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.write(wake_fd, b"!")  # wakes a TerminalInput waiting for a line
        # session.interrupt() waits for the event loop: not in a signal handler of this thread.
        thread = threading.Thread(target=_interrupt_quietly, args=(session,), name="kernelexec-sigint")
        interrupter.append(thread)
        thread.start()

    previous = signal.signal(signal.SIGINT, interrupt_the_code)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        for thread in interrupter:
            thread.join(timeout=30)


def _interrupt_quietly(session: Session) -> None:
    with contextlib.suppress(KernelexecError):  # the call ended or the session closed meanwhile
        session.interrupt()


class TerminalInput:
    """``--stdin``: answers the kernel's ``input()`` with a line read from our stdin.

    Runs on kernelexec's event-loop thread, so it must not block for ever: it stops waiting at
    the call's time limit, and at Ctrl-C (a byte on ``wake_fd``), answering ``""``. It reads
    the fd itself, byte by byte, so no line is left unseen in a buffer between two ``input()``.
    """

    def __init__(self, wake_fd: int) -> None:
        self._wake_fd = wake_fd
        self.deadline = math.inf  # set when the call starts

    def __call__(self, prompt: str, password: bool) -> str:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        with _no_echo() if password else contextlib.nullcontext():
            line = self._read_line()
        if password:
            sys.stdout.write("\n")
            sys.stdout.flush()
        return line

    def _read_line(self) -> str:
        fd = sys.stdin.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        line = ""
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return line
            ready, _, _ = select.select([fd, self._wake_fd], [], [], None if left == math.inf else left)
            if self._wake_fd in ready or not ready:
                return line
            byte = os.read(fd, 1)
            if not byte:  # end of input
                return line + decoder.decode(b"", final=True)
            line += decoder.decode(byte)
            if line.endswith("\n"):
                return line.rstrip("\r\n")


@contextlib.contextmanager
def _no_echo() -> Iterator[None]:
    """Turn the terminal's echo off, as getpass does (nothing to do when stdin is not a tty)."""
    fd = sys.stdin.fileno()
    try:
        old = termios.tcgetattr(fd)
    except termios.error:  # not a terminal
        yield
        return
    new = list(old)
    new[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSAFLUSH, new)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, old)
