"""Papermill-style parameter injection and CLI values: pure functions, no kernel."""

from __future__ import annotations

import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import kernelexec as kx
from kernelexec._parameters import inject_parameters, parse_cli_value, python_assignments, read_parameters_file


def notebook(*cells) -> nbformat.NotebookNode:
    return new_notebook(cells=list(cells))


def tagged(source: str, *tags: str) -> nbformat.NotebookNode:
    return new_code_cell(source, metadata={"tags": list(tags)})


def test_injected_cell_follows_the_parameters_cell_and_is_tagged_as_papermill_tags_it():
    nb = notebook(new_markdown_cell("# title"), tagged("alpha = 1", "parameters"), new_code_cell("alpha"))
    inject_parameters(nb, {"alpha": 2})
    assert [c.source for c in nb.cells] == ["# title", "alpha = 1", "# Parameters\nalpha = 2\n", "alpha"]
    assert nb.cells[2].metadata.tags == ["injected-parameters"]
    assert nb.metadata.papermill.parameters == {"alpha": 2}
    nbformat.validate(nb)


def test_without_a_parameters_cell_the_injected_cell_goes_first():
    nb = notebook(new_code_cell("x"))
    inject_parameters(nb, {"x": "s"})
    assert nb.cells[0].source == "# Parameters\nx = 's'\n"


def test_a_previous_injected_cell_is_replaced():
    nb = notebook(tagged("a = 1", "parameters"), tagged("# Parameters\na = 5\n", "injected-parameters"))
    inject_parameters(nb, {"a": 7})
    assert [c.source for c in nb.cells] == ["a = 1", "# Parameters\na = 7\n"]


def test_an_old_format_notebook_gets_a_cell_without_an_id():
    nb = notebook(new_code_cell("x"))
    nb.nbformat_minor = 4
    for cell in nb.cells:
        del cell["id"]
    inject_parameters(nb, {"x": 1})
    assert "id" not in nb.cells[0]
    nbformat.validate(nb)


def test_values_become_python_literals():
    source = python_assignments(
        {"n": 3, "f": 0.5, "big": float("inf"), "s": "it's", "b": False, "none": None,
         "items": [1, (2,), {"k": "v"}]}
    )  # fmt: skip
    namespace: dict = {}
    exec(source, namespace)
    assert {k: namespace[k] for k in ("n", "f", "big", "s", "b", "none", "items")} == {
        "n": 3, "f": 0.5, "big": float("inf"), "s": "it's", "b": False, "none": None,
        "items": [1, (2,), {"k": "v"}],
    }  # fmt: skip


@pytest.mark.parametrize("parameters", [{"not a name": 1}, {"x": object()}, {"x": {1, 2}}])
def test_bad_names_and_values_are_refused_with_a_reason(parameters):
    with pytest.raises(kx.InvalidArgument):
        python_assignments(parameters)


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), ("-2.5", -2.5), ("True", True), ("False", False), ("None", None), ("abc", "abc"), ("1e3", 1000.0)],
)
def test_cli_values_are_read_as_papermill_reads_them(text, value):
    assert parse_cli_value(text) == value and type(parse_cli_value(text)) is type(value)


def test_a_parameters_file_is_yaml_or_json_and_yaml_dates_stay_strings(tmp_path):
    (tmp_path / "p.yaml").write_text("rate: 0.5\nwhen: 2024-05-01\nnames: [a, b]\n")
    (tmp_path / "p.json").write_text('{"rate": 1, "nested": {"k": null}}')
    (tmp_path / "empty.yaml").write_text("")
    assert read_parameters_file(str(tmp_path / "p.yaml")) == {"rate": 0.5, "when": "2024-05-01", "names": ["a", "b"]}
    assert read_parameters_file(str(tmp_path / "p.json")) == {"rate": 1, "nested": {"k": None}}
    assert read_parameters_file(str(tmp_path / "empty.yaml")) == {}


def test_without_pyyaml_a_parameters_file_must_be_json(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    (tmp_path / "p.json").write_text('{"n": 2}')
    (tmp_path / "p.yaml").write_text("n: 2\n")
    assert read_parameters_file(str(tmp_path / "p.json")) == {"n": 2}
    with pytest.raises(kx.InvalidArgument, match="pip install pyyaml"):
        read_parameters_file(str(tmp_path / "p.yaml"))


@pytest.mark.parametrize(("text", "message"), [("- 1\n", "not a list"), ("a: [\n", "not YAML or JSON")])
def test_a_bad_parameters_file_is_an_invalid_argument(tmp_path, text, message):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(kx.InvalidArgument, match=message):
        read_parameters_file(str(tmp_path / "p.yaml"))
    with pytest.raises(kx.InvalidArgument, match="cannot read"):
        read_parameters_file(str(tmp_path / "missing.yaml"))
