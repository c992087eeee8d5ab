"""The spill file of one call: the full text of output that was truncated, for an agent to read.

The collector decides what goes in (``write``) and when it is void (``clear``: a
``clear_output`` emptied the outputs); this object does the file I/O. The file is created on the
first truncation (``open``), kept when the call's output was truncated, and deleted otherwise.
A kernel that bounds the call's output itself writes the text it withheld to ``kernel_path``;
``splice`` copies it into the file where it belongs, and ``close`` deletes the kernel's file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterable
from typing import TextIO

COPY_CHUNK_BYTES = 1 << 20


class SpillFile:
    """A file in ``directory`` named ``kernelexec-<call number>-<random>.txt``, made on demand."""

    def __init__(self, directory: str, call_number: int, *, kernel_directory: str | None = None) -> None:
        self._directory = directory
        self._prefix = f"kernelexec-{call_number}-"
        self._file: TextIO | None = None
        # Where the kernel writes what it withheld (created by the kernel, if at all): beside the
        # file, or in ``kernel_directory`` for a kernel that cannot see ``directory`` (sandboxed).
        name = f".{self._prefix}{secrets.token_hex(8)}.kernel"
        self.kernel_path = os.path.join(kernel_directory or directory, name)

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

    def splice(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Append these ``(offset, length)`` byte ranges of the kernel's file (UTF-8 text)."""
        self.open()
        assert self._file is not None
        self._file.flush()
        target = self._file.buffer
        missing = 0
        try:
            with open(self.kernel_path, "rb") as source:
                for offset, length in ranges:
                    source.seek(offset)
                    while length > 0:
                        chunk = source.read(min(length, COPY_CHUNK_BYTES))
                        if not chunk:
                            break
                        target.write(chunk)
                        length -= len(chunk)
                    missing += length
        except OSError as error:
            missing, reason = sum(length for _, length in ranges), f": {error}"
        else:
            reason = ""
        if missing:  # said where the text would be, rather than a silent gap or an exception
            target.write(f"\n[kernelexec: {missing} bytes of output withheld by the kernel are missing here{reason}]\n".encode())
        target.flush()

    def clear(self) -> None:
        """Forget what was written: the outputs it recorded are gone."""
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()

    def close(self, *, keep: bool) -> str | None:
        """Close the file; its path if ``keep`` (and anything was written), else it is deleted."""
        with contextlib.suppress(OSError):
            os.unlink(self.kernel_path)
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
