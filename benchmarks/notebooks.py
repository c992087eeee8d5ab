"""A 50-cell notebook through kx.run_notebook and through nbclient.NotebookClient, in one run.

Run: python benchmarks/notebooks.py [--cells 50] [--rounds 5]

Each round runs the same notebook once with each client (alternating, so that machine drift hits
both alike), end to end: kernel start, every cell, shutdown. The script prints the median times
and their ratio, and the per-cell overhead of each: (time for N cells - time for 1 cell) / (N - 1),
which leaves kernel start-up out.
"""

from __future__ import annotations

import argparse
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


def run_kernelexec(nb: nbformat.NotebookNode, folder: str) -> float:
    started = time.perf_counter()
    out = kx.run_notebook(nb, cwd=folder, timeout=60)
    elapsed = time.perf_counter() - started
    assert all(c.execution_count for c in out.cells)
    return elapsed


def run_nbclient(nb: nbformat.NotebookNode, folder: str) -> float:
    started = time.perf_counter()
    out = NotebookClient(
        nbformat.from_dict(nb), kernel_name="python3", timeout=60,
        resources={"metadata": {"path": folder}},
    ).execute()  # fmt: skip
    elapsed = time.perf_counter() - started
    assert all(c.execution_count for c in out.cells)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    big, one = make_notebook(args.cells), make_notebook(1)
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        run_kernelexec(one, folder), run_nbclient(one, folder)  # warm-up: imports, disk caches
        for _ in range(args.rounds):
            for nb, size in ((big, args.cells), (one, 1)):
                times.setdefault(("kernelexec", size), []).append(run_kernelexec(nb, folder))
                times.setdefault(("nbclient", size), []).append(run_nbclient(nb, folder))
    median = {key: statistics.median(samples) for key, samples in times.items()}
    print(f"{args.cells}-cell notebook, end to end (kernel start, all cells, shutdown), median of {args.rounds} rounds:")
    for name in ("kernelexec", "nbclient"):
        total, single = median[(name, args.cells)], median[(name, 1)]
        per_cell = (total - single) / (args.cells - 1)
        print(f"  {name:<10} {total:6.3f} s   1-cell notebook {single:6.3f} s   per cell {per_cell * 1000:6.2f} ms")
    ratio = median[("kernelexec", args.cells)] / median[("nbclient", args.cells)]
    print(f"  ratio kernelexec / nbclient: {ratio:.2f}x")


if __name__ == "__main__":
    main()
