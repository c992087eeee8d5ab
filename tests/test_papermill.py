"""papermill's run record, differentially: papermill 2.7's own test notebooks run through papermill
and through run_notebook(record_papermill=True), and the two written notebooks compared — the
record's keys and value types, each cell's status, the error banners, the error outputs and the
execution counts; not the times."""

from __future__ import annotations

import asyncio
import os
import shutil

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from reference_tools import run_reference

import kernelexec as kx

pytestmark = pytest.mark.timeout(120)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance", "papermill")
NOTEBOOKS = sorted(name for name in os.listdir(SOURCE) if name.endswith(".ipynb"))
TIMES = ("start_time", "end_time", "duration")


def run_kernelexec(path: str, output: str) -> BaseException | None:
    try:
        kx.run_notebook(path, output_path=output, record_papermill=True)
    except kx.CellExecutionError as error:
        return error
    return None


def shape(record: dict) -> dict:
    """A metadata.papermill with its times reduced to whether they are set."""
    return {key: (value is not None if key in TIMES else value) for key, value in record.items()}


def banner_free_view(nb: nbformat.NotebookNode) -> list[tuple]:
    """Each cell as (type, source, papermill tags, execution count, papermill record, errors)."""
    view = []
    for cell in nb.cells:
        tags = [tag for tag in cell.metadata.get("tags", []) if tag.startswith("papermill")]
        errors = [(o.ename, o.evalue) for o in cell.get("outputs", []) if o.output_type == "error"]
        record = shape(cell.metadata["papermill"]) if "papermill" in cell.metadata else None
        view.append((cell.cell_type, cell.source, tags, cell.get("execution_count"), record, errors))
    return view


@pytest.fixture(scope="module")
def papermill_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every notebook through papermill once, from a private copy of the folder."""
    folder = tmp_path_factory.mktemp("papermill")
    shutil.copytree(SOURCE, folder, dirs_exist_ok=True)
    runs = {}
    for name in NOTEBOOKS:
        path = str(folder / name)
        runs[name] = (path, run_reference("papermill", path, str(folder / f"papermill-{name}")))
    return runs


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_run_record_matches_papermills(papermill_runs, name, tmp_path):
    path, reference = papermill_runs[name]
    output = str(tmp_path / name)
    raised = run_kernelexec(path, output)
    ours = nbformat.read(output, as_version=4)
    theirs = reference.nb
    # The run fails where papermill's fails, and succeeds where papermill's does (sys.exit(0)).
    assert (raised is not None) == (reference.error is not None), (raised, reference.error)
    want, got = shape(theirs.metadata.papermill), shape(ours.metadata.papermill)
    want.pop("version")  # papermill's own version: not kernelexec's to claim, but one kept from an
    got.pop("version", None)  # earlier run (broken1) stays
    want["output_path"] = output  # the same run, written elsewhere
    assert got == want
    assert banner_free_view(ours) == banner_free_view(theirs)


def test_stale_banners_go_and_a_fixed_notebook_runs_clean(tmp_path):
    cells = [new_markdown_cell("# Title"), new_code_cell("value = 1", metadata={"tags": ["parameters"]})]
    nb = new_notebook(cells=[*cells, new_code_cell("1/value")])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    first = tmp_path / "first.ipynb"
    with pytest.raises(kx.CellExecutionError):
        kx.run_notebook(path, output_path=first, record_papermill=True, parameters={"value": 0})
    failed = nbformat.read(first, as_version=4)
    tagged = [i for i, cell in enumerate(failed.cells) if "papermill-error-cell-tag" in cell.metadata.get("tags", [])]
    assert tagged == [0, 4]  # the banner first, the anchor just before the failing cell
    assert "In [3]" in failed.cells[0].source
    again = tmp_path / "again.ipynb"
    kx.run_notebook(first, output_path=again, record_papermill=True, parameters={"value": 2})
    fixed = nbformat.read(again, as_version=4)
    assert not any("papermill-error-cell-tag" in c.metadata.get("tags", []) for c in fixed.cells)
    assert fixed.metadata.papermill.exception is None
    assert [c.metadata.papermill.status for c in fixed.cells] == ["completed"] * 4


def test_a_long_cell_is_saved_while_it_runs_and_marked_running(tmp_path):
    marker, output = tmp_path / "go-on", tmp_path / "out.ipynb"
    wait = f"print('first', flush=True)\nimport os, time\nwhile not os.path.exists({str(marker)!r}):\n    time.sleep(0.05)\nprint('second')"
    nb = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell(wait)])

    async def main() -> nbformat.NotebookNode:
        run = asyncio.create_task(
            kx.async_run_notebook(nb, output_path=output, record_papermill=True, autosave_cell_every=0.2)
        )
        for _ in range(600):  # 30 s at most for the save to show the running cell's first line
            await asyncio.sleep(0.05)
            saved = nbformat.read(output, as_version=4) if output.exists() else None
            if saved is not None and saved.cells[1].outputs:
                break
            assert not run.done(), run
        marker.touch()
        await run
        return saved

    saved = asyncio.run(main())
    assert saved.cells[1].outputs[0].text == "first\n"
    assert saved.cells[0].metadata.papermill.status == "completed"
    assert saved.cells[1].metadata.papermill.status == "running"
    final = nbformat.read(output, as_version=4)
    assert final.cells[1].outputs[0].text == "first\nsecond\n"
    assert final.cells[1].metadata.papermill.status == "completed"
