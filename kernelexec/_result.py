"""What one ``execute()`` returns: outputs, status, error details and the text an agent reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import humanize

from ._errors import ExecutionFailed
from ._traceback import Frame, plain_traceback

if TYPE_CHECKING:  # nbformat costs ~1.5 s to import: only the annotations need it
    from nbformat import NotebookNode

Status = Literal["ok", "error", "timeout", "interrupted", "died"]

# The command line's exit code for each status (124 and 137 as timeout(1) and a SIGKILL give).
EXIT_STATUS: dict[str, int] = {"ok": 0, "error": 1, "interrupted": 130, "timeout": 124, "died": 137}


@dataclass(frozen=True)
class ErrorInfo:
    """Why a call did not succeed: the exception the code raised, or what happened to the kernel.

    ``traceback`` holds the kernel's lines with ANSI colours; ``text`` is the same traceback as
    plain text; ``frames`` are the user's frames taken from the exception object in the kernel,
    innermost last (IPython's own frames left out).
    """

    ename: str
    evalue: str
    traceback: list[str] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    exc_info: dict[str, Any] = field(default_factory=dict)

    @property
    def headline(self) -> str:
        """``"ename: evalue"``, the last line of a Python traceback."""
        return f"{self.ename}: {self.evalue}" if self.evalue else self.ename

    @cached_property
    def text(self) -> str:
        """The IPython-formatted traceback as plain text (or the headline when there is none)."""
        return plain_traceback(self.traceback) if self.traceback else self.headline


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one ``execute()`` call. Code errors are data here, never raised.

    ``status`` is one of ``"ok"``, ``"error"`` (the code raised), ``"timeout"``, ``"interrupted"``
    (someone called ``interrupt()``) and ``"died"`` (the kernel process died during the call).
    ``outputs`` are nbformat v4 output nodes with clear_output and update_display_data applied;
    the other fields are derived views of them for agents and for AIDE-style callers.

    >>> r = session.execute("print('hi'); 1 + 1")
    >>> r.stdout, r.result
    ('hi\\n', '2')
    """

    status: Status
    outputs: list[NotebookNode]
    error: ErrorInfo | None
    exec_time: float
    execution_count: int | None
    time_limit: float
    restarted: bool = False
    # After a restart, the state was restored from before this call (keep_state_on_restart).
    state_restored: bool = False
    truncated_bytes: int = 0
    output_path: str | None = None
    code: str = ""
    # When the kernel stamped the call's busy, execute_input, reply and idle messages (ISO 8601,
    # UTC), under the keys nbclient's record_timing writes to a cell's ``metadata.execution``.
    timing: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        """``True`` when the code ran to completion without raising."""
        return self.status == "ok"

    @cached_property
    def stdout(self) -> str:
        """Everything the code printed to standard output."""
        return self._stream_text("stdout")

    @cached_property
    def stderr(self) -> str:
        """Everything the code printed to standard error."""
        return self._stream_text("stderr")

    @cached_property
    def result(self) -> str | None:
        """The ``text/plain`` form of the value of the last expression, or ``None``."""
        for output in reversed(self.outputs):
            if output.output_type == "execute_result":
                return output.data.get("text/plain")
        return None

    @cached_property
    def displays(self) -> list[dict[str, Any]]:
        """Mime bundles of display_data and execute_result outputs (images stay base64)."""
        return [
            dict(output.data)
            for output in self.outputs
            if output.output_type in ("display_data", "execute_result")
        ]

    @cached_property
    def text(self) -> str:
        """What an agent reads: streams, results and plain tracebacks in arrival order."""
        return "".join(output_text(output) for output in self.outputs)

    # AIDE's ExecutionResult fields, with AIDE's meanings.

    @property
    def term_out(self) -> list[str]:
        """The terminal output as AIDE gives it: the text, then the footer lines."""
        text = self.text
        if text and not text.endswith("\n"):
            text += "\n"
        return [text, *(line + "\n" for line in self.footer_lines()[:-1]), self.footer_lines()[-1]]

    @property
    def exc_type(self) -> str | None:
        """The exception class name (``"TimeoutError"`` on timeout), or ``None`` when ok."""
        return None if self.error is None else self.error.ename

    @property
    def exc_info(self) -> dict[str, Any] | None:
        """The exception's ``args`` and ``name``/``msg``/``obj`` attributes, as strings."""
        return None if self.error is None else self.error.exc_info

    @property
    def exc_stack(self) -> list[tuple[str, int | None, str, str]] | None:
        """The frames as ``(filename, lineno, name, line)`` tuples, innermost last."""
        return None if self.error is None else [tuple(frame) for frame in self.error.frames]

    def raise_for_error(self) -> ExecutionResult:
        """Raise ``ExecutionFailed`` (carrying this result) unless the status is ok."""
        if not self.ok:
            raise ExecutionFailed(self)
        return self

    def summary(self) -> str:
        """The text followed by a humanized footer (time taken, timeout, kernel fate)."""
        return "".join(self.term_out)

    def __str__(self) -> str:
        return self.summary()

    def _stream_text(self, name: str) -> str:
        return "".join(
            output.text
            for output in self.outputs
            if output.output_type == "stream" and output.name == name
        )

    def footer_lines(self) -> list[str]:
        """The humanized footer of ``summary()``, one line each: timeout or death, truncation, time."""
        limit = humanize.naturaldelta(self.time_limit)
        lines = []
        if self.status == "timeout":
            if self.state_restored:
                fate = ("the kernel did not respond to the interrupt and was restarted; its state "
                        "is as it was before this call")  # fmt: skip
            elif self.restarted:
                fate = "the kernel did not respond to the interrupt and was restarted; its state is lost"
            else:
                fate = "the code was interrupted; the kernel's state is kept"
            lines.append(f"TimeoutError: Execution exceeded the time limit of {limit} ({fate}).")
        elif self.status == "died" and self.error is not None:
            lines.append(self.error.headline)
        if self.truncated_bytes:
            where = f"; the full output is in {self.output_path}" if self.output_path else ""
            lines.append(f"Output truncated: {self.truncated_bytes:,} bytes not shown{where}.")
        bound = "no time limit" if math.isinf(self.time_limit) else f"time limit is {limit}"
        lines.append(f"Execution time: {humanize.naturaldelta(self.exec_time)} ({bound}).")
        return lines


def output_text(output: NotebookNode) -> str:
    """The part of an output an agent reads: ``result.text`` and the spill file are made of it."""
    kind = output.output_type
    if kind == "stream":
        return output.text
    if kind == "error":
        text = plain_traceback(output.traceback) if output.traceback else f"{output.ename}: {output.evalue}"
        return text + "\n"
    if kind in ("execute_result", "display_data"):
        plain = output.get("data", {}).get("text/plain")
        return plain + "\n" if plain else ""
    return ""
