"""Notebooks in and out: reading with one-line reasons for what is not a notebook, and writing
that never leaves a half-written file.

A run writes its output notebook many times (after each cell, and during a long one): each write
goes to a temporary file in the same folder that then replaces the target, so a crash or a signal
in the middle of a write leaves the previous complete notebook, never a truncated one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import nbformat
from nbformat import NotebookNode

from ._errors import InvalidArgument, InvalidNotebook

log = logging.getLogger("kernelexec")

# How much of a file that is not JSON is quoted in the message.
QUOTED_CHARS = 40


def read_notebook_file(path: str) -> NotebookNode:
    """The notebook at ``path`` as nbformat v4; ``InvalidNotebook`` says what is wrong with it."""
    if not os.path.isfile(path):
        raise InvalidArgument(f"notebook {path!r} does not exist (or is not a file)")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise InvalidArgument(f"cannot read notebook {path!r}: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidNotebook(
            f"{path!r} is not a notebook: it is not UTF-8 text (byte {error.start} is "
            f"{data[error.start]:#04x}); a .ipynb file is JSON"
        ) from None
    return notebook_from_text(text, repr(path))


def notebook_from_text(text: str, where: str) -> NotebookNode:
    """Parse a notebook's JSON text; ``where`` names it in messages (a quoted path, ``stdin``)."""
    if not text.strip():
        raise InvalidNotebook(f"{where} is empty, not a notebook")
    try:
        content = json.loads(text)
    except ValueError as error:
        first = text.strip().splitlines()[0][:QUOTED_CHARS]
        raise InvalidNotebook(
            f"{where} is not a notebook: not JSON ({error.msg} at line {error.lineno}; it "
            f"starts {first!r})"
        ) from None
    return notebook_from_mapping(content, where)


def notebook_from_mapping(content: Any, where: str) -> NotebookNode:
    """A private v4 copy of a notebook given as parsed JSON or a node, checked for what a run
    needs (a schema violation that does not stop a run is logged, not raised)."""
    if not isinstance(content, Mapping):
        raise InvalidNotebook(f"{where} is not a notebook: JSON {type(content).__name__}, not an object")
    version = content.get("nbformat")
    needed = "cells" if not isinstance(version, int) or version >= 4 else "worksheets"
    missing = [key for key in ("nbformat", needed) if key not in content]
    if missing:
        keys = ", ".join(sorted(map(str, content))[:5]) or "none"
        raise InvalidNotebook(
            f"{where} is not a notebook: no {' or '.join(map(repr, missing))} key (its keys: {keys})"
        )
    major = content["nbformat"]
    if not isinstance(major, int) or major not in nbformat.versions:
        raise InvalidNotebook(f"{where} is not a notebook: nbformat {major!r} is no nbformat version")
    try:
        # As nbformat.read does, less its logging: multi-line strings joined, transient data dropped.
        nb = nbformat.versions[major].to_notebook_json(copy.deepcopy(dict(content)))
        if major != 4:
            nb = nbformat.convert(nb, 4)
    except Exception as error:  # nbformat raises many kinds (ValidationError, KeyError, TypeError)
        reason = getattr(error, "message", None) or str(error) or type(error).__name__
        if isinstance(error, (KeyError, AttributeError)):  # NotebookNode's missing attribute
            reason = f"a part of it lacks the key {reason}"
        raise InvalidNotebook(f"{where} is not a valid notebook: {_one_line(reason)}") from None
    _check_cells(nb, where)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as error:  # runnable all the same, as nbformat.read and nbclient find
        reason = _one_line(error.message)
        log.warning("%s does not follow the notebook schema (%s); running it anyway", where, reason)
    return nb


def _check_cells(nb: NotebookNode, where: str) -> None:
    """What a run needs of each cell: a type and a source; a code cell's missing outputs (and any
    cell's missing metadata) are filled in empty."""
    if not isinstance(nb.get("cells"), list):
        raise InvalidNotebook(f"{where} is not a valid notebook: its 'cells' is not a list")
    for index, cell in enumerate(nb.cells):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise InvalidNotebook(
                f"{where} is not a valid notebook: cell {index} has no code, markdown or raw cell_type"
            )
        if not isinstance(cell.get("source"), str):
            raise InvalidNotebook(f"{where} is not a valid notebook: cell {index} has no source text")
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = NotebookNode()
        if cell.cell_type == "code":
            if not isinstance(cell.get("outputs"), list):
                cell["outputs"] = []
            cell.setdefault("execution_count", None)


def write_notebook_atomically(nb: NotebookNode, path: str, *, validate: bool = True) -> None:
    """Write ``nb`` to ``path`` through a temporary file in the same folder that replaces it.

    ``validate=False`` skips nbformat's schema check (costly on big notebooks), for the saves a
    run makes while it goes on; the last save validates (and logs what is invalid, as
    ``nbformat.write`` does).
    """
    text = nbformat.writes(nb) if validate else nbformat.v4.writes(nb)
    if not text.endswith("\n"):
        text += "\n"
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    # O_EXCL: a name nobody else holds; mode 0o666 less the umask, as open() would give.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:197] + "..."


class Autosaver:
    """Saves a running notebook: now (``save``), and during a long cell (``touch``) at most once
    every ``every`` seconds (0: never during a cell), as papermill's ``autosave_cell_every``.

    ``touch`` is called on the event loop when the running cell changes; a change that comes
    too soon after the last save is saved when the interval is up, by a timer on the loop, so
    the last outputs of a cell that then goes quiet are saved too. ``refresh`` is called before
    such a save to put the running cell's outputs so far into the notebook.
    """

    def __init__(self, nb: NotebookNode, path: str | None, every: float) -> None:
        self._nb = nb
        self._path = path
        self._every = every
        self._last_save = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.refresh: Callable[[], None] | None = None

    def save(self, *, final: bool = False) -> None:
        """Write the notebook now. The final save validates it and raises what went wrong; a
        save while the run goes on logs a failure (a full disk must not end the run)."""
        self.cancel()
        if self._path is None:
            return
        try:
            write_notebook_atomically(self._nb, self._path, validate=final)
        except OSError:
            if final:
                raise
            log.exception("could not save the notebook to %s; the run goes on", self._path)
        self._last_save = time.monotonic()

    def touch(self) -> None:
        """The running cell changed: save it now if the interval is up, else when it is."""
        if self._path is None or not self._every or self._timer is not None:
            return
        wait = self._last_save + self._every - time.monotonic()
        if wait <= 0:
            self._save_running()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self._save_running)

    def cancel(self) -> None:
        """Drop a pending save (the caller saves now, or the run is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _save_running(self) -> None:
        self._timer = None
        if self.refresh is not None:
            self.refresh()
        self.save()
