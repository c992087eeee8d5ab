"""The smolagents executor, with smolagents' real CodeAgent driven by a scripted model."""

from __future__ import annotations

import io
import math
import os
import signal
import time
from collections.abc import Iterator

import pytest

smolagents = pytest.importorskip("smolagents")

from rich.console import Console  # noqa: E402  (smolagents depends on rich)
from smolagents import ActionStep, ChatMessage, CodeAgent, Model, tool  # noqa: E402
from smolagents.local_python_executor import LocalPythonExecutor  # noqa: E402
from smolagents.models import MessageRole  # noqa: E402
from smolagents.monitoring import AgentLogger, LogLevel  # noqa: E402
from smolagents.utils import AgentError  # noqa: E402

import kernelexec as kx  # noqa: E402
from kernelexec.integrations.smolagents import KernelExecutor  # noqa: E402

pytestmark = pytest.mark.timeout(90)

PNG_1x1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


class ScriptedModel(Model):
    """A model that answers with the next of its replies, and remembers what it was shown."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(model_id="scripted")
        self.replies = list(replies)
        self.prompts: list[str] = []

    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs):
        self.prompts.append(str(messages[-1]))
        return ChatMessage(role=MessageRole.ASSISTANT, content=self.replies.pop(0))


@tool
def double(x: int) -> int:
    """Doubles a number.

    Args:
        x: the number to double
    """
    return 2 * x


def code(thought: str, source: str) -> str:
    return f"Thought: {thought}\n<code>\n{source}\n</code>"


@pytest.fixture
def executor() -> Iterator[KernelExecutor]:
    executor = KernelExecutor(timeout=2)
    yield executor
    executor.cleanup()


def test_code_agent_define_use_error_timeout_continue(executor):
    model = ScriptedModel([
        code("define", "import os\nanswer = double(base)\nprint('kernel', os.getpid(), answer)"),
        code("use", "answer + 1"),
        code("fail", "def f():\n    return 1 / 0\nf()"),
        code("hang", "import time\nprint('sleeping')\ntime.sleep(30)"),
        code("finish", "final_answer(answer + 2)"),
    ])  # fmt: skip
    with CodeAgent(tools=[double], model=model, executor=executor, max_steps=8, verbosity_level=0) as agent:
        answer = agent.run("compute", additional_args={"base": 20})
        steps = [step for step in agent.memory.steps if isinstance(step, ActionStep)]
        assert executor.session.is_alive  # the kernel outlived the timeout
    assert answer == 42
    assert [step.error is None for step in steps] == [True, True, False, False, True]
    assert "Execution logs:\nkernel " in steps[0].observations and " 40\n" in steps[0].observations
    assert steps[1].observations.endswith("Last output from code snippet:\n41")
    failed = str(steps[2].error)
    assert "ZeroDivisionError: division by zero" in failed and "return 1 / 0" in failed
    hung = str(steps[3].error)
    assert "sleeping" in hung and "TimeoutError: Execution exceeded the time limit of 2 seconds" in hung
    assert "kernel's state is kept" in hung
    assert "TimeoutError" in model.prompts[4]  # the model was shown the timeout before finishing


def test_cleanup_through_the_agent_shuts_the_kernel_down():
    executor = KernelExecutor(timeout=5)
    model = ScriptedModel([code("finish", "final_answer('done')")])
    with CodeAgent(tools=[], model=model, executor=executor, verbosity_level=0) as agent:
        assert agent.run("finish") == "done"
    assert executor.session.closed


def test_send_variables_and_tools_then_call(executor):
    executor.send_variables({"numbers": [1, 2, 3], "label": "sum"})
    executor.send_tools({"double": double})
    result = executor("print(label)\ndouble(sum(numbers))")
    assert (result.output, result.logs, result.is_final_answer) == ("12", "sum\n", False)


def test_final_answer_returns_the_value_itself(executor):
    from smolagents.default_tools import FinalAnswerTool

    executor.send_tools({"final_answer": FinalAnswerTool()})
    result = executor("print('last words')\nfinal_answer({'total': 3, 'items': (1, 2)})")
    assert result.is_final_answer
    assert result.output == {"total": 3, "items": (1, 2)}
    assert result.logs == "last words\n"


def test_image_results_become_pil_images(executor):
    result = executor(
        f"from IPython.display import Image\nimport base64\nImage(data=base64.b64decode('{PNG_1x1}'))"
    )
    assert result.output.size == (1, 1)


def test_kernel_death_is_an_agent_error_and_the_executor_recovers(executor):
    executor("kept = 1")
    with pytest.raises(AgentError, match="exited with code 3 during this call"):
        executor("import os\nos._exit(3)")
    assert executor("'kept' in globals()").output == "False"


def test_a_shared_session_outlives_cleanup():
    with kx.Session(timeout=10) as session:
        session.execute("shared = 5")
        executor = KernelExecutor(session=session)
        assert executor("shared * 2").output == "10"
        executor.cleanup()
        assert session.execute("shared").result == "5"


def test_missing_packages_are_reported_not_installed():
    console = Console(file=io.StringIO(), width=200)
    executor = KernelExecutor(
        ["json", "os.path", "kernelexec_no_such_package", "*"], AgentLogger(LogLevel.INFO, console)
    )
    executor.cleanup()
    log = console.file.getvalue()
    assert "Not installed in the kernel's environment: kernelexec_no_such_package " in log
    assert "json" not in log.split("Not installed")[1].split("(")[0]


def run_agent(executor, replies: list[str], max_steps: int = 4) -> tuple[object, list[ActionStep], ScriptedModel]:
    model = ScriptedModel(replies)
    with CodeAgent(tools=[double], model=model, executor=executor, max_steps=max_steps, verbosity_level=0) as agent:
        answer = agent.run("compute", additional_args={"base": 20})
        steps = [step for step in agent.memory.steps if isinstance(step, ActionStep)]
    return answer, steps, model


RESET_NOTE = "The tools and the variables given to the agent are defined again"


def test_after_the_kernel_dies_the_next_step_has_the_tools_and_variables_again():
    replies = [
        code("crash", "import os\nos._exit(1)"),
        code("finish", "final_answer(double(base) + 2)"),
    ]  # fmt: skip
    answer, steps, model = run_agent(KernelExecutor(timeout=10), replies)
    assert answer == 42  # not the model's raw text after max_steps
    assert [step.error is None for step in steps] == [False, True]
    died = str(steps[0].error)
    assert "exited with code 1" in died and "state is lost" in died and RESET_NOTE in died
    assert RESET_NOTE in model.prompts[1]  # the model was told before its next step
    # smolagents' own executor on the same steps: it refuses `import os`, then finishes the same way
    local_answer, local_steps, _ = run_agent(LocalPythonExecutor([]), replies)
    assert local_answer == answer
    assert [step.error is None for step in local_steps] == [False, True]


@pytest.mark.timeout(120)
def test_after_the_timeout_ladder_restarts_the_kernel_the_tools_are_back():
    replies = [
        code("hang", "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"),
        code("finish", "final_answer(double(base))"),
    ]  # fmt: skip
    answer, steps, _ = run_agent(KernelExecutor(timeout=1, interrupt_grace=1), replies)
    assert answer == 40
    restarted = str(steps[0].error)
    assert "TimeoutError" in restarted and "was restarted" in restarted and RESET_NOTE in restarted


def test_a_kernel_restarted_between_steps_is_set_up_before_the_next(executor):
    executor.send_variables({"base": 4})
    executor.send_tools({"double": double})
    executor.session.restart()
    result = executor("double(base)")
    assert result.output == "8"
    assert RESET_NOTE in result.logs


def test_a_kernel_killed_between_steps_is_replaced_and_set_up_before_the_next(executor):
    executor.send_variables({"base": 4})
    executor.send_tools({"double": double})
    pid = int(executor("import os\nos.getpid()").output)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while executor.session.is_alive and time.monotonic() < deadline:  # the session learns it
        time.sleep(0.01)
    result = executor("double(base)")
    assert result.output == "8"
    assert RESET_NOTE in result.logs


def test_a_second_run_of_the_same_agent_still_finds_final_answer():
    """CodeAgent sends its tools again at every run; smolagents' patch of final_answer, applied
    twice to the same tool, made it fail with a NameError in the kernel."""
    for executor in (KernelExecutor(timeout=10), LocalPythonExecutor([])):
        model = ScriptedModel([code("one", "final_answer(1)"), code("two", "final_answer(2)")])
        with CodeAgent(tools=[], model=model, executor=executor, max_steps=2, verbosity_level=0) as agent:
            assert agent.run("first") == 1
            assert agent.run("second", reset=False) == 2, type(executor).__name__


def test_timeout_none_means_no_time_limit_as_for_the_local_executor():
    local = LocalPythonExecutor([], timeout_seconds=None)
    local.send_tools({})
    executor = KernelExecutor(timeout=None)
    try:
        assert executor.session.execute("1").time_limit == math.inf
        assert executor("import time\ntime.sleep(0.1)\n2").output == "2" == str(local("2").output)
    finally:
        executor.cleanup()


def test_timeout_must_be_none_or_a_positive_number():
    with pytest.raises(kx.KernelexecError, match="timeout must be a positive number"):
        KernelExecutor(timeout=0)
