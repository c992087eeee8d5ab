"""A smolagents code executor that runs a ``CodeAgent``'s actions in a kernelexec session.

smolagents' remote executors (Docker, E2B, Modal, ...) run the agent's code in a Jupyter kernel
somewhere else; ``KernelExecutor`` is one of them with the kernel on this machine, started and
supervised by kernelexec: a code action that loops forever is interrupted at ``timeout`` and the
agent reads a ``TimeoutError``; a kernel that dies is replaced and the agent is told its state is
gone. Requires the ``smolagents`` extra (``pip install 'kernelexec[smolagents]'``).

>>> from smolagents import CodeAgent
>>> from kernelexec.integrations.smolagents import KernelExecutor
>>> with CodeAgent(tools=[], model=model, executor=KernelExecutor(timeout=30)) as agent:
...     agent.run("What is the 20th Fibonacci number?")

Like the other remote executors it inherits ``send_variables`` (values travel as JSON, or as
pickles with ``allow_pickle=True``), ``send_tools`` (tool classes are re-created from their
source in the kernel) and the detection of ``final_answer``, which is patched to raise an
exception carrying the answer. Unlike them it keeps what was sent: every new kernel (after a
death, a restart by the timeout ladder, or ``session.restart()``) gets the tools and variables
again before the next step, and the model is told the rest of its state is gone.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import math
from collections.abc import Iterator
from typing import Any

from smolagents.local_python_executor import CodeOutput
from smolagents.monitoring import AgentLogger, LogLevel
from smolagents.remote_executors import RemotePythonExecutor
from smolagents.utils import AgentError

from .._result import ExecutionResult
from .._session import Session

try:  # the time limit smolagents' local executor uses, where this version has one
    from smolagents.local_python_executor import MAX_EXECUTION_TIME_SECONDS as _DEFAULT_TIMEOUT
except ImportError:  # pragma: no cover - older smolagents
    _DEFAULT_TIMEOUT = 30

_IMAGE_TYPES = ("image/png", "image/jpeg")
RESET_NOTE = (
    "The kernel was restarted: variables, imports and functions from earlier steps are gone. "
    "The tools and the variables given to the agent are defined again."
)


class KernelExecutor(RemotePythonExecutor):
    """Runs a ``CodeAgent``'s code in a persistent local kernel (a ``kernelexec.Session``).

    ``additional_imports``, ``logger`` and ``allow_pickle`` mean what they mean for smolagents'
    remote executors (``CodeAgent`` passes its ``additional_authorized_imports`` and logger when
    it builds one; built by hand, a silent logger is used: the agent reports errors itself). Packages the agent may import that are
    missing from the kernel's environment are reported, and installed with ``%pip`` only when
    ``install_missing=True``. ``session`` reuses a running session, which ``cleanup()`` then
    leaves running; otherwise the executor starts its own with ``timeout`` (seconds per code
    action; ``None`` for no limit, as ``LocalPythonExecutor(timeout_seconds=None)``) and any
    other ``kernelexec.Session`` option.
    """

    def __init__(
        self,
        additional_imports: list[str] | None = None,
        logger: AgentLogger | None = None,
        allow_pickle: bool = False,
        *,
        session: Session | None = None,
        install_missing: bool = False,
        timeout: float | None = _DEFAULT_TIMEOUT,
        **session_options: Any,
    ) -> None:
        super().__init__(
            list(additional_imports or []), logger or AgentLogger(LogLevel.OFF), allow_pickle
        )
        self.install_missing = install_missing
        self._owns_session = session is None
        self._tools: dict[str, Any] = {}  # what every new kernel gets before the next step
        self._variables: dict[str, Any] = {}
        self._setting_up = False
        if session is None:
            session = Session(timeout=math.inf if timeout is None else timeout, **session_options)
        self.session = session
        try:
            self.session.start()
            self._set_up_kernel = self.session.kernel_id
            self.installed_packages = self.install_packages(self.additional_imports)
        except BaseException:
            self.cleanup()
            raise
        self.logger.log(f"Kernel {self.session.kernel_id} is running", level=LogLevel.INFO)

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        """Run ``code`` in the kernel; a ``final_answer(...)`` call ends it with the answer.

        Raises ``AgentError`` (which the agent shows the model) when the code raised, ran past
        the time limit or killed its kernel; the message has the output, the traceback and
        what became of the kernel's state. A new kernel, found before the code runs or left by
        it, gets the tools and variables again; the logs or the error say so.
        """
        reset = not self._setting_up and self._set_up_new_kernel()
        result = self.session.execute(code)
        if not self._setting_up and self._set_up_new_kernel():
            reset = True
        note = f"{RESET_NOTE}\n" if reset else ""
        logs = note + "".join(
            output.text for output in result.outputs if output.output_type == "stream"
        )
        error = result.error
        if error is not None and error.ename == self.FINAL_ANSWER_EXCEPTION:
            answer = self._deserialize_final_answer(error.evalue, self.allow_pickle)
            return CodeOutput(output=answer, logs=logs, is_final_answer=True)
        if not result.ok:
            message = f"Executing code yielded an error:\n{result.summary()}\n{note}"
            raise AgentError(message.rstrip("\n"), self.logger)
        return CodeOutput(output=_output_value(result), logs=logs, is_final_answer=False)

    def _set_up_new_kernel(self) -> bool:
        """If the session's kernel is not the one set up last, send it the tools and variables;
        a kernel found dead is replaced first. True when the kernel was a new one."""
        if not self.session.is_alive and not self.session.closed:
            self.session.restart()  # else the next step would only learn that the kernel died
        if self.session.kernel_id == self._set_up_kernel:
            return False
        self._set_up_kernel = self.session.kernel_id
        with self._sending():
            if self._variables:
                super().send_variables(self._variables)
            if self._tools:
                super().send_tools(self._tools)
        return True

    def send_variables(self, variables: dict[str, Any]) -> None:
        """Define ``variables`` in the kernel, and in every kernel that replaces it."""
        self._set_up_new_kernel()
        self._variables.update(variables)
        with self._sending():
            super().send_variables(variables)

    def send_tools(self, tools: dict[str, Any]) -> None:
        """Define ``tools`` in the kernel, and in every kernel that replaces it."""
        self._set_up_new_kernel()
        self._tools.update(tools)
        with self._sending():
            super().send_tools(tools)

    @contextlib.contextmanager
    def _sending(self) -> Iterator[None]:
        """Setup code runs as it is: no setting up of new kernels from inside it."""
        self._setting_up = True
        try:
            yield
        finally:
            self._setting_up = False

    def _patch_final_answer_with_exception(self, final_answer_tool: Any) -> None:
        # smolagents patches the tool instance in place, and a second patch (CodeAgent sends its
        # tools at every run) breaks it: the patched forward's source is read back without the
        # value it closes over, and final_answer fails in the kernel with a NameError.
        if "_forward" in vars(type(final_answer_tool)):
            return
        super()._patch_final_answer_with_exception(final_answer_tool)

    def install_packages(self, additional_imports: list[str]) -> list[str]:
        """Find which of these packages the kernel cannot import; ``%pip install`` them only when
        the executor was created with ``install_missing=True``, else log them."""
        names = sorted(
            {name.split(".")[0] for name in additional_imports if name and "*" not in name}
        )
        if not names:
            return list(additional_imports)
        probe = self.session.execute(
            f"[name for name in {names!r} if __import__('importlib.util').util.find_spec(name) is None]"
        )
        missing = ast.literal_eval(probe.result) if probe.ok and probe.result else []
        if missing and self.install_missing:
            done = self.session.execute(f"%pip install {' '.join(missing)}", timeout=600)
            self.logger.log(done.text)
        elif missing:
            self.logger.log(
                f"Not installed in the kernel's environment: {', '.join(missing)} (create the "
                "executor with install_missing=True to install them with %pip)",
                level=LogLevel.INFO,
            )
        return list(additional_imports)

    def cleanup(self) -> None:
        """Shut down the kernel, unless the session was passed in by the caller."""
        if self._owns_session:
            self.session.shutdown()

    def delete(self) -> None:
        """Same as ``cleanup()``, the name smolagents' other executors also answer to."""
        self.cleanup()


def _output_value(result: ExecutionResult) -> Any:
    """The value of the code's last expression, as the other remote executors give it: an image
    for image results (when Pillow is there), else the ``text/plain`` form."""
    for output in reversed(result.outputs):
        if output.output_type != "execute_result":
            continue
        for mime in _IMAGE_TYPES:
            if mime in output.data:
                try:
                    import PIL.Image
                except ImportError:
                    break
                return PIL.Image.open(io.BytesIO(base64.b64decode(output.data[mime])))
        return output.data.get("text/plain")
    return None


__all__ = ["KernelExecutor"]
