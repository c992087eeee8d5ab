"""The real tools kernelexec is compared with, nbclient and papermill, run on the same notebooks.

Each runs in a child process: jupyter_core's ``run_sync``, which both use, keeps an event loop
(and its socket pair) for the life of the process, which the leak check would rightly report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import nbformat
from nbformat import NotebookNode

_SCRIPT = r"""
import json, sys
import nbformat

tool, source, output, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
hooks = []
report = {"error": None, "hooks": hooks}
try:
    if tool == "nbclient":
        from nbclient import NotebookClient

        limits = options.pop("timeout_by_tag", None)  # {tag: seconds}: a timeout_func
        if limits is not None:
            options["timeout_func"] = lambda cell: next((limits[t] for t in cell.metadata.get("tags", []) if t in limits), None)
        for name in options.pop("hooks", []):
            options[name] = (lambda name: lambda **kw: hooks.append([name, kw["cell_index"]]))(name)
        nb = nbformat.read(source, as_version=4)
        client = NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": options.pop("cwd")}}, **options)
        try:
            client.execute()
        finally:
            nbformat.write(nb, output)
    else:
        import papermill

        papermill.execute_notebook(source, output, progress_bar=False, **options)
except Exception as error:
    report["error"] = {"type": type(error).__name__, "ename": getattr(error, "ename", None), "evalue": str(getattr(error, "evalue", ""))}
print(json.dumps(report))
"""


@dataclass
class Reference:
    """What the tool wrote, what it raised (type, ename, evalue) and the hooks it called."""

    nb: NotebookNode
    error: dict[str, Any] | None
    hooks: list[tuple[str, int]] = field(default_factory=list)


def run_reference(tool: str, source: str, output: str, **options: Any) -> Reference:
    """Run ``tool`` ("nbclient" or "papermill") on the notebook file ``source``."""
    if tool == "nbclient":
        options.setdefault("cwd", os.path.dirname(os.path.abspath(source)))
    env = dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1")
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, tool, source, output, json.dumps(options)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return Reference(
        nbformat.read(output, as_version=4), report["error"], [tuple(h) for h in report["hooks"]]
    )
