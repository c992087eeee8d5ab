"""The README's Python examples, extracted and run as written, each in a process of its own.

Every fenced ``python`` block of README.md is a test. A plain fenced block right after one is
the output it prints, compared as doctest compares (``...`` matches anything; the humanized
execution time in a footer varies with the machine's load and is not compared). A comment
``<!-- readme-test: skip (why) -->`` above a block skips it, visibly; ``<!-- readme-test: prelude
NAME (what) -->`` runs one of the stand-ins below first, in the same script, for what the example
takes from outside (your agent, a model, a notebook). The examples run on this checkout: the
``kernelexec`` command they start is this checkout's too.
"""

from __future__ import annotations

import doctest
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass, field

import markdown_it
import pytest
from conftest import REPO_ROOT

import kernelexec as kx

README = os.path.join(REPO_ROOT, "README.md")
EXAMPLE_TIMEOUT = 150  # seconds; the AIDE example alone waits out a 5 s timeout

PRELUDES = {
    "agent": '''
class _Step:
    def __init__(self, code):
        self.code = code

    def observe(self, observation):
        print("observed:", observation.splitlines()[0])

    def note(self, text):
        print("note:", text)


class _Agent:
    """Three steps: define, use, and one that kills the kernel (so the note is taken)."""

    def steps(self):
        return [_Step("x = 21"), _Step("print(x * 2)"), _Step("import os; os._exit(1)")]


agent = _Agent()
''',
    "analysis-notebook": '''
import nbformat
from nbformat.v4 import new_code_cell, new_notebook

nbformat.write(new_notebook(cells=[
    new_code_cell("learning_rate = 0.1", metadata={"tags": ["parameters"]}),
    new_code_cell("print(learning_rate * 2)"),
]), "analysis.ipynb")
''',
    "scripted-model": '''
import smolagents
from smolagents import ChatMessage, Model
from smolagents.models import MessageRole


class _ScriptedModel(Model):
    """Stands in for InferenceClientModel (a hosted model): answers with fixed code."""

    def __init__(self, *args, **kwargs):
        super().__init__(model_id="scripted")

    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs):
        code = "a, b = 0, 1\\nfor _ in range(20):\\n    a, b = b, a + b\\nfinal_answer(a)"
        return ChatMessage(role=MessageRole.ASSISTANT, content=f"Thought: iterate.\\n<code>\\n{code}\\n</code>")


smolagents.InferenceClientModel = _ScriptedModel
''',
}



def _check_agent(directory: str, stdout: str) -> None:
    # The stand-in's last step kills the kernel: the example's restart branch must be taken.
    *_, died, note = stdout.splitlines()
    assert died.startswith("observed: KernelDied: the kernel process exited with code 1"), stdout
    assert note == "note: the kernel was restarted: redefine what you need", stdout


def _check_analysis(directory: str, stdout: str) -> None:
    import nbformat

    executed = nbformat.read(os.path.join(directory, "analysis.out.ipynb"), as_version=4)
    assert executed.cells[-1].outputs[0].text == "0.02\n"  # the parameter passed in was used


def _check_model(directory: str, stdout: str) -> None:
    assert stdout.splitlines()[-1] == "6765", stdout  # the rest is smolagents' own log


# What an example run after a stand-in must have done, when the README shows no output for it.
CHECKS = {"agent": _check_agent, "analysis-notebook": _check_analysis, "scripted-model": _check_model}

_DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(skip|prelude)\s+(.*?)\s*-->")


@dataclass
class Example:
    """One ``python`` block of the README, where it is, and what the README says about it."""

    name: str
    line: int
    code: str
    expected: str | None = None
    skip: str | None = None
    preludes: list[str] = field(default_factory=list)


def readme_examples(text: str) -> list[Example]:
    """The ``python`` blocks of ``text``, with their directive and the output block after them."""
    lines = text.splitlines()
    examples: list[Example] = []
    heading = "top"
    seen: dict[str, int] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
        if line.strip() != "```python":
            index += 1
            continue
        end = lines.index("```", index + 1)
        seen[heading] = seen.get(heading, 0) + 1
        name = heading if seen[heading] == 1 else f"{heading}-{seen[heading]}"
        example = Example(name=name, line=index + 1, code="\n".join(lines[index + 1 : end]) + "\n")
        before = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        directive = _DIRECTIVE.fullmatch(before.strip())
        if directive:
            kind, argument = directive.groups()
            if kind == "skip":
                example.skip = argument.strip("()")
            else:
                example.preludes = [argument.split()[0]]
        after = end + 1
        while after < len(lines) and not lines[after].strip():
            after += 1
        if after < len(lines) and lines[after].strip() == "```":
            output_end = lines.index("```", after + 1)
            example.expected = "\n".join(lines[after + 1 : output_end]) + "\n"
            end = output_end
        examples.append(example)
        index = end + 1
    return examples


with open(README, encoding="utf-8") as _readme:
    EXAMPLES = readme_examples(_readme.read())


def _kernelexec_command(directory: str) -> str:
    """A ``kernelexec`` on PATH that runs this checkout with this interpreter."""
    path = os.path.join(directory, "kernelexec")
    with open(path, "w") as script:
        script.write(f'#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec {sys.executable} -m kernelexec "$@"\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return directory


def _comparable(text: str) -> str:
    text = re.sub(r"Execution time: .*? \(time limit", "Execution time: ... (time limit", text)
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines()) + "\n"


def test_the_readme_has_examples_and_every_skip_says_why():
    assert len(EXAMPLES) >= 10
    names = [example.name for example in EXAMPLES]
    assert len(set(names)) == len(names)
    for example in EXAMPLES:
        assert example.skip is None or len(example.skip) > 10, example
        assert all(prelude in PRELUDES for prelude in example.preludes), example


@pytest.mark.timeout(EXAMPLE_TIMEOUT + 30)
@pytest.mark.parametrize("example", EXAMPLES, ids=[example.name for example in EXAMPLES])
def test_readme_example_runs_as_written(example: Example, tmp_path):
    if example.skip:
        pytest.skip(f"README line {example.line}: {example.skip}")
    script = "".join(PRELUDES[name] for name in example.preludes) + example.code
    (tmp_path / "example.py").write_text(script)
    bin_dir = _kernelexec_command(str(tmp_path))
    env = dict(
        os.environ, PYTHONPATH=REPO_ROOT, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    env.pop("PYTEST_CURRENT_TEST", None)  # ipykernel does not capture fds 1 and 2 under it
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=EXAMPLE_TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, f"README line {example.line} failed:\n{done.stderr}"
    for prelude in example.preludes:
        CHECKS[prelude](str(tmp_path), done.stdout)
    if example.expected is not None:
        checker = doctest.OutputChecker()
        assert checker.check_output(_comparable(example.expected), _comparable(done.stdout), doctest.ELLIPSIS), (
            f"README line {example.line} printed:\n{done.stdout}\nthe README shows:\n{example.expected}"
        )


@pytest.mark.timeout(90)
def test_the_experiment_notebook_renders_its_markdown_table_as_a_table(tmp_path):
    nb = kx.run_notebook(os.path.join(REPO_ROOT, "notebooks", "experiment.ipynb"), timeout=60)
    tables = [
        "".join(output["data"]["text/markdown"])
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "text/markdown" in output.get("data", {})
    ]
    assert tables, "the notebook shows no Markdown output"
    renderer = markdown_it.MarkdownIt("commonmark").enable("table")
    for table in tables:
        html = renderer.render(table)
        assert "<table>" in html, html
        header, body = html.split("</thead>")
        assert header.count("<th>") == 4 and body.count("<td>") == 4, html
