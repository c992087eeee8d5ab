"""The spill file of one call: the full text of output that was truncated, for an agent to read.

The collector decides what goes in (``write``) and when it is void (``clear``: a
``clear_output`` emptied the outputs); this object does the file I/O. The file is created on the
first truncation (``open``), kept when the call's output was truncated, and deleted otherwise.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import TextIO


class SpillFile:
    """A file in ``directory`` named ``kernelexec-<call number>-<random>.txt``, made on demand."""

    def __init__(self, directory: str, call_number: int) -> None:
        self._directory = directory
        self._prefix = f"kernelexec-{call_number}-"
        self._file: TextIO | None = None

    def open(self) -> None:
        """Create the file (once): the call's output is being truncated."""
        if self._file is None:
            self._file = tempfile.NamedTemporaryFile(
                "w", dir=self._directory, prefix=self._prefix, suffix=".txt", delete=False,
                encoding="utf-8", errors="replace",
            )  # fmt: skip

    def write(self, text: str) -> None:
        self.open()
        assert self._file is not None
        self._file.write(text)

    def clear(self) -> None:
        """Forget what was written: the outputs it recorded are gone."""
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()

    def close(self, *, keep: bool) -> str | None:
        """Close the file; its path if ``keep`` (and anything was written), else it is deleted."""
        spilled, self._file = self._file, None
        if spilled is None:
            return None
        with contextlib.suppress(OSError):  # the error that ended the call may be a full disk
            spilled.close()
        if keep:
            return spilled.name
        with contextlib.suppress(OSError):
            os.unlink(spilled.name)
        return None
