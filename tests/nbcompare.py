"""Compare executed notebooks with stored ones after nbclient's test normalisation.

The rules follow nbclient's own test suite (tests/test_client.py, ``normalize_output``): output
metadata dropped; memory addresses replaced in stream text and ``text/plain``; SVG compared as
parsed XML; base64 payloads compared without line breaks; tracebacks compared with ANSI codes
stripped and IPython's input labels replaced; execution counts compared exactly.

One rule is ours: a traceback's context lines (the numbered source lines around the failing one)
are dropped, because IPython 9 shows more of them than the IPython that stored these outputs; the
failing line (``---->``), the frame headers and the exception line are still compared.
"""

from __future__ import annotations

import base64
import copy
import binascii
import re
import xml.etree.ElementTree as ET
from typing import Any

from nbformat import NotebookNode

ADDRESS = re.compile(r"0x[0-9a-f]{7,9}")
ANSI = re.compile(r"\x1b\[(.*?)([@-~])")  # nbconvert's strip_ansi, as nbclient's tests use it
IPYTHON_INPUT = re.compile(r"(<ipython-input-\d+-[0-9a-f]+>|<IPY-INPUT>) in (<module>|<cell line: \d>\(\))")
CONTEXT_LINE = re.compile(r"^ {4,}\d+ .*$\n?", re.M)
IPYTHON8_INPUT = re.compile(r"((Cell|Input) In\s?\[\d+\]|<IPY-INPUT>), (in )?(line \d|<module>|<cell line: \d>\(\))")


def _xml(text: str) -> Any:
    def tree(element: ET.Element) -> Any:
        return (element.tag, dict(element.attrib), (element.text or "").strip(), [tree(c) for c in element])

    return tree(ET.fromstring(text))


def _base64(text: str) -> str:
    try:
        return base64.b64encode(base64.b64decode(text.encode("ascii"))).decode("ascii")
    except (ValueError, TypeError, binascii.Error):
        return text


def normalize_output(output: NotebookNode) -> dict[str, Any]:
    """One output as nbclient's tests compare it."""
    output = {key: value for key, value in output.items() if key != "metadata"}
    if "text" in output:
        output["text"] = ADDRESS.sub("<HEXADDR>", output["text"])
    if "data" in output:
        data = dict(output["data"])
        if "text/plain" in data:
            data["text/plain"] = ADDRESS.sub("<HEXADDR>", data["text/plain"])
        if "image/svg+xml" in data:
            data["image/svg+xml"] = _xml(data["image/svg+xml"])
        output["data"] = {k: _base64(v) if isinstance(v, str) else v for k, v in data.items()}
    if "traceback" in output:
        lines = []
        for line in output["traceback"]:
            line = IPYTHON_INPUT.sub("<IPY-INPUT>", ANSI.sub("", line))
            lines.append(CONTEXT_LINE.sub("", IPYTHON8_INPUT.sub("<IPY-INPUT>", line)))
        output["traceback"] = lines
    return output


def differences(expected: NotebookNode, actual: NotebookNode) -> list[str]:
    """What differs between two notebooks' outputs and execution counts (empty when equal)."""
    if len(expected.cells) != len(actual.cells):
        return [f"{len(expected.cells)} cells expected, {len(actual.cells)} found"]
    found = []
    for index, (want, got) in enumerate(zip(expected.cells, actual.cells)):
        want_outputs = [normalize_output(o) for o in want.get("outputs", [])]
        got_outputs = [normalize_output(o) for o in got.get("outputs", [])]
        if want_outputs != got_outputs:
            found.append(f"cell {index} outputs:\n  expected {want_outputs}\n  found    {got_outputs}")
        if want.get("execution_count") != got.get("execution_count"):
            found.append(
                f"cell {index} execution_count: expected {want.get('execution_count')}, "
                f"found {got.get('execution_count')}"
            )
    return found


def cleaned(nb: NotebookNode) -> NotebookNode:
    """A copy of ``nb`` without outputs and execution counts, as nbclient's tests run it."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count, cell.outputs = None, []
    return nb
