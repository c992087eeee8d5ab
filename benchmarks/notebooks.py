"""A 50-cell notebook through kx.run_notebook and through nbclient.NotebookClient, in one run.

Run: python benchmarks/notebooks.py [--cells 50] [--rounds 5]

Each round runs the same notebook once with each client (alternating, so that machine drift hits
both alike), end to end: kernel start, every cell, shutdown. The script prints the median times
and their ratio, and the cost of one cell: the median time from one cell's start to the next's,
on the kernel's clock (the ``iopub.status.busy`` timestamps both clients record), which is the
cell's run in the kernel plus the client's turnaround, without kernel start-up and its noise.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import tempfile
import time
import warnings

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

import kernelexec as kx


def make_notebook(cells: int) -> nbformat.NotebookNode:
    """Cells like an analysis notebook's: assignments, prints, expressions and displays."""
    sources = []
    for i in range(cells):
        kind = i % 4
        if kind == 0:
            sources.append(f"values_{i} = [n * n for n in range({100 + i})]")
        elif kind == 1:
            sources.append(f"print('cell {i}:', sum(values_{i - 1}))")
        elif kind == 2:
            sources.append(f"len(values_{i - 2}) * {i}")
        else:
            sources.append(f"from IPython.display import HTML\ndisplay(HTML('<b>cell {i}</b>'))")
    return new_notebook(
        cells=[new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


Run = tuple[float, list[float]]  # seconds end to end, seconds from each cell's start to the next's


def run_kernelexec(nb: nbformat.NotebookNode, folder: str) -> Run:
    started = time.perf_counter()
    out = kx.run_notebook(nb, cwd=folder, timeout=60)
    return time.perf_counter() - started, cell_steps(out)


def run_nbclient(nb: nbformat.NotebookNode, folder: str) -> Run:
    started = time.perf_counter()
    out = NotebookClient(
        nbformat.from_dict(nb), kernel_name="python3", timeout=60,
        resources={"metadata": {"path": folder}},
    ).execute()  # fmt: skip
    return time.perf_counter() - started, cell_steps(out)


def cell_steps(nb: nbformat.NotebookNode) -> list[float]:
    assert all(c.execution_count for c in nb.cells)
    starts = [
        datetime.datetime.fromisoformat(c.metadata.execution["iopub.status.busy"].replace("Z", "+00:00"))
        for c in nb.cells
    ]
    return [(later - earlier).total_seconds() for earlier, later in zip(starts, starts[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    nb = make_notebook(args.cells)
    totals: dict[str, list[float]] = {"kernelexec": [], "nbclient": []}
    steps: dict[str, list[float]] = {"kernelexec": [], "nbclient": []}
    with tempfile.TemporaryDirectory() as folder:
        run_kernelexec(nb, folder), run_nbclient(nb, folder)  # warm-up: imports, disk caches
        for _ in range(args.rounds):
            for name, run in (("kernelexec", run_kernelexec), ("nbclient", run_nbclient)):
                total, cell_times = run(nb, folder)
                totals[name].append(total)
                steps[name].extend(cell_times)
    print(f"{args.cells}-cell notebook, end to end (kernel start, all cells, shutdown), median of {args.rounds} rounds:")
    for name in ("kernelexec", "nbclient"):
        total, step = statistics.median(totals[name]), statistics.median(steps[name])
        print(f"  {name:<10} {total:6.3f} s   one cell (start to next start) {step * 1000:5.2f} ms")
    ratio = statistics.median(totals["kernelexec"]) / statistics.median(totals["nbclient"])
    step_ratio = statistics.median(steps["kernelexec"]) / statistics.median(steps["nbclient"])
    print(f"  ratio kernelexec / nbclient: {ratio:.2f}x end to end, {step_ratio:.2f}x per cell")


if __name__ == "__main__":
    main()
