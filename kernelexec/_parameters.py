"""Papermill-style parameters: a cell of assignments injected after the cell tagged ``parameters``.

As papermill does it: the new cell is tagged ``injected-parameters`` and replaces one left by an
earlier run; without a ``parameters`` cell it goes first. The notebook's metadata records the
values under ``papermill.parameters``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import nbformat
from nbformat import NotebookNode

from ._errors import InvalidArgument

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


def inject_parameters(nb: NotebookNode, parameters: Mapping[str, Any]) -> None:
    """Insert (or replace) the injected-parameters cell of ``nb``, in place."""
    source = python_assignments(parameters)
    cells = [cell for cell in nb.cells if INJECTED_TAG not in cell_tags(cell)]
    at = next((i + 1 for i, cell in enumerate(cells) if PARAMETERS_TAG in cell_tags(cell)), 0)
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    if nb.get("nbformat_minor", 0) < 5:
        del cell["id"]  # cell ids exist from nbformat 4.5 on; older notebooks must not have them
    cells.insert(at, cell)
    nb.cells = cells
    nb.metadata.setdefault("papermill", NotebookNode())["parameters"] = nbformat.from_dict(dict(parameters))


def python_assignments(parameters: Mapping[str, Any]) -> str:
    """``# Parameters`` and one ``name = value`` line per parameter, as papermill writes them."""
    lines = ["# Parameters"]
    for name, value in parameters.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidArgument(f"parameter name {name!r} is not a Python identifier")
        lines.append(f"{name} = {_python_literal(name, value)}")
    return "\n".join(lines) + "\n"


def read_parameters_file(path: str) -> dict[str, Any]:
    """Parameters from a YAML or JSON file of ``name: value`` pairs, as papermill's ``-f`` reads it
    (YAML dates stay strings). YAML needs pyyaml; without it the file must be JSON."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise InvalidArgument(f"cannot read parameters file {path!r}: {reason}") from None
    try:
        import yaml
    except ImportError:
        try:
            values = json.loads(text) if text.strip() else None
        except ValueError as error:
            raise InvalidArgument(
                f"parameters file {path!r} is not JSON ({error}); for YAML, pip install pyyaml"
            ) from None
    else:
        try:
            values = yaml.load(text, Loader=_no_dates_loader(yaml))
        except yaml.YAMLError as error:
            problem = " ".join(str(error).split())
            raise InvalidArgument(f"parameters file {path!r} is not YAML or JSON: {problem}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InvalidArgument(
            f"parameters file {path!r} must hold name: value pairs, not a {type(values).__name__}"
        )
    return values


def _no_dates_loader(yaml: Any) -> Any:
    """PyYAML's safe loader less its timestamp rule, as papermill's ``NoDatesSafeLoader``."""

    class NoDatesSafeLoader(yaml.SafeLoader):  # type: ignore[misc, name-defined]
        yaml_implicit_resolvers = {
            key: [rule for rule in rules if rule[0] != "tag:yaml.org,2002:timestamp"]
            for key, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

    return NoDatesSafeLoader


def parse_cli_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value as papermill reads it: int, float, True/False/None, else str."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _python_literal(name: str, value: Any) -> str:
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, (list, tuple)):
        items = ", ".join(_python_literal(name, item) for item in value)
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' if len(value) == 1 else ''})"
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{_python_literal(name, key)}: {_python_literal(name, item)}" for key, item in value.items()
        )
        return "{" + items + "}"
    raise InvalidArgument(
        f"parameter {name!r} is a {type(value).__name__}; pass None, bool, int, float, str, or "
        "lists, tuples and dicts of those"
    )


def cell_tags(cell: NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))
