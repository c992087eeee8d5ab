"""Progress of a notebook run: a tqdm bar on a terminal, one plain line per cell otherwise."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Protocol, TextIO

from tqdm import tqdm

from ._record import is_clean_exit
from ._result import ExecutionResult


class Progress(Protocol):
    """What a notebook run reports, cell by cell. Implement it to show progress your own way."""

    def start(self, name: str, total: int) -> None:
        """The run of ``name`` begins; ``total`` code cells will run (if none fails)."""

    def cell_started(self, index: int, source: str) -> None:
        """The cell at ``index`` in the notebook starts running."""

    def cell_finished(self, index: int, result: ExecutionResult) -> None:
        """The cell at ``index`` finished, with ``result``."""

    def close(self) -> None:
        """The run is over (finished, failed or interrupted)."""


class NoProgress:
    """Reports nothing."""

    def start(self, name: str, total: int) -> None:
        pass

    def cell_started(self, index: int, source: str) -> None:
        pass

    def cell_finished(self, index: int, result: ExecutionResult) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress(NoProgress):
    """One line per finished cell, for logs and pipes: ``[3/12] cell 5: ok in 0.02 s``."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._total = 0
        self._done = 0

    def start(self, name: str, total: int) -> None:
        self._total = total
        self._print(f"running {name}: {total} code cell{'s' if total != 1 else ''}")

    def cell_finished(self, index: int, result: ExecutionResult) -> None:
        self._done += 1
        self._print(f"[{self._done}/{self._total}] cell {index}: {cell_status(result)}")

    def _print(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


class _Bar(tqdm):  # type: ignore[type-arg]
    monitor_interval = 0  # no monitor thread: nothing of ours outlives the run


class BarProgress:
    """A tqdm progress bar showing the running cell; failed cells get a line above the bar.

    While a cell runs the bar is redrawn every ``TICK_SECONDS`` by a timer on the event loop
    the run is on, so its elapsed time moves during a long cell (no thread of its own).
    """

    TICK_SECONDS = 1.0

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: _Bar | None = None
        self._ticker: asyncio.TimerHandle | None = None

    def start(self, name: str, total: int) -> None:
        self._bar = _Bar(total=total, desc=name, unit="cell", file=self._stream, dynamic_ncols=True)

    def cell_started(self, index: int, source: str) -> None:
        if self._bar is not None:
            first_line = source.strip().splitlines()[0] if source.strip() else ""
            self._bar.set_postfix_str(f"cell {index}: {first_line[:40]}")
            self._tick_later()

    def cell_finished(self, index: int, result: ExecutionResult) -> None:
        self._stop_ticking()
        if self._bar is None:
            return
        if not result.ok:
            self._bar.write(f"cell {index}: {cell_status(result)}", file=self._stream)
        self._bar.update(1)

    def close(self) -> None:
        self._stop_ticking()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _tick_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven from outside an event loop: the bar moves per cell only
            return
        self._ticker = loop.call_later(self.TICK_SECONDS, self._tick)

    def _tick(self) -> None:
        if self._bar is not None:
            self._bar.refresh()
            self._tick_later()

    def _stop_ticking(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None


def cell_status(result: ExecutionResult) -> str:
    """``ok in 0.02 s``, or the status and the error headline."""
    if result.ok:
        return f"ok in {result.exec_time:.2f} s"
    headline = f": {result.error.headline}" if result.error is not None else ""
    status = "ended the run" if is_clean_exit(result) else result.status
    return f"{status}{headline} (after {result.exec_time:.2f} s)"


def make_progress(progress: bool | Progress) -> Progress:
    """``True``: a bar when stderr is a terminal, plain lines otherwise."""
    if progress is False:
        return NoProgress()
    if progress is not True:
        return progress
    return BarProgress(sys.stderr) if _is_sized_terminal(sys.stderr) else LineProgress(sys.stderr)


def _is_sized_terminal(stream: TextIO) -> bool:
    """A terminal tqdm can draw on (a pseudo-terminal without a size shows no bar at all)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False
