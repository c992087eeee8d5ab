"""``kernelexec mcp``, driven by the MCP SDK's own client over a real stdio subprocess."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import pytest

pytest.importorskip("mcp")

import nbformat  # noqa: E402
from conftest import REPO_ROOT  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

pytestmark = pytest.mark.timeout(120)

PNG_1x1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def with_server(
    scenario: Callable[[Client], Awaitable[Any]], *args: str, env: dict[str, str] | None = None
) -> Any:
    """Start ``kernelexec mcp ARGS`` on this checkout, connect the SDK's client, run ``scenario``."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "kernelexec", "mcp", *args],
        env={
            "PYTHONPATH": REPO_ROOT,
            "JUPYTER_RUNTIME_DIR": os.environ["JUPYTER_RUNTIME_DIR"],
            **(env or {}),
        },
    )

    async def main() -> Any:
        async with Client(params, read_timeout_seconds=60) as client:
            return await scenario(client)

    return asyncio.run(main())


async def execute(client: Client, session: str, code: str, **arguments: Any) -> tuple[bool, str]:
    result = await client.call_tool("execute", {"session": session, "code": code, **arguments})
    return result.is_error, result.content[0].text


def test_tools_are_listed_with_descriptions():
    async def scenario(client: Client) -> Any:
        return {tool.name: tool for tool in (await client.list_tools()).tools}

    tools = with_server(scenario)
    assert sorted(tools) == [
        "close_session", "execute", "export_notebook", "fork_session", "list_sessions",
        "restart_session",
    ]  # fmt: skip
    assert set(tools["execute"].input_schema["required"]) == {"session", "code"}
    assert "timeout" in tools["execute"].input_schema["properties"]
    assert all(tool.description for tool in tools.values())


def test_define_use_error_timeout_continue(tmp_path):
    async def scenario(client: Client) -> list[tuple[bool, str]]:
        return [
            await execute(client, "agent", "import math\nx = math.sqrt(16)\nprint('defined')\nx"),
            await execute(client, "agent", "x * 2"),
            await execute(client, "agent", "def f():\n    return 1 / 0\nf()"),
            await execute(client, "agent", "import time\nprint('working')\ntime.sleep(30)", timeout=1),
            await execute(client, "agent", "x + 1"),
        ]

    started = time.monotonic()
    defined, used, failed, timed_out, continued = with_server(
        scenario, "--timeout", "20", "--root", str(tmp_path)
    )
    assert defined == (False, "defined\n4.0\nExecution time: a moment (time limit is 20 seconds).")
    assert used == (False, "8.0\nExecution time: a moment (time limit is 20 seconds).")
    assert failed[0] is False  # the code's error is a result the model reads, not a tool error
    assert "ZeroDivisionError: division by zero" in failed[1] and "----> 2     return 1 / 0" in failed[1]
    assert timed_out[0] is False
    assert timed_out[1].startswith("working\n")
    assert "TimeoutError: Execution exceeded the time limit of a second (the code was interrupted; " \
        "the kernel's state is kept)." in timed_out[1]
    assert continued == (False, "5.0\nExecution time: a moment (time limit is 20 seconds).")
    assert time.monotonic() - started < 30


def test_images_come_as_image_content():
    code = (
        "from IPython.display import Image, display\nimport base64\n"
        f"display(Image(data=base64.b64decode('{PNG_1x1}')))\nprint('shown')"
    )

    async def scenario(client: Client) -> Any:
        return await client.call_tool("execute", {"session": "plots", "code": code})

    result = with_server(scenario)
    assert [block.type for block in result.content] == ["text", "image"]
    assert "shown" in result.content[0].text
    # The image is not repeated as its text/plain repr next to it.
    assert "IPython.core.display.Image object" not in result.content[0].text
    assert result.content[0].text.startswith("shown\nExecution time:")
    image = result.content[1]
    assert image.mime_type == "image/png"
    assert base64.b64decode(image.data) == base64.b64decode(PNG_1x1)


def test_sessions_are_separate_and_can_be_listed_restarted_and_closed():
    async def scenario(client: Client) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        await execute(client, "a", "v = 'in a'")
        await execute(client, "b", "v = 'in b'")
        seen["a"] = await execute(client, "a", "v")
        seen["b"] = await execute(client, "b", "v")
        listed = await client.call_tool("list_sessions", {})
        seen["listed"] = json.loads(listed.content[0].text)
        seen["restart"] = (await client.call_tool("restart_session", {"session": "a"})).content[0].text
        seen["a after restart"] = await execute(client, "a", "'v' in globals()")
        seen["close"] = (await client.call_tool("close_session", {"session": "b"})).content[0].text
        listed = await client.call_tool("list_sessions", {})
        seen["after close"] = [s["session"] for s in listed.structured_content["sessions"]]
        return seen

    seen = with_server(scenario)
    assert seen["a"][1].startswith("'in a'\n") and seen["b"][1].startswith("'in b'\n")
    rows = {row["session"]: row for row in seen["listed"]["sessions"]}
    assert sorted(rows) == ["a", "b"]
    assert rows["a"]["executions"] == 2 and rows["a"]["status"] == "idle"
    assert seen["restart"] == "Session 'a' restarted: it runs a fresh kernel, all variables are gone."
    assert seen["a after restart"][1].startswith("False\n")
    assert seen["close"].startswith("Session 'b' closed")
    assert seen["after close"] == ["a"]


def test_fork_session_copies_a_session_that_then_goes_its_own_way():
    async def scenario(client: Client) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        await execute(client, "a", "plan = ['x']")
        forked = await client.call_tool("fork_session", {"session": "a", "new_session": "b"})
        seen["fork"] = forked.is_error, forked.content[0].text
        seen["b"] = await execute(client, "b", "plan.append('y'); plan")
        seen["a"] = await execute(client, "a", "plan")
        again = await client.call_tool("fork_session", {"session": "a", "new_session": "b"})
        seen["again"] = again.is_error, again.content[0].text
        missing = await client.call_tool("fork_session", {"session": "nope", "new_session": "c"})
        seen["missing"] = missing.is_error, missing.content[0].text
        return seen

    seen = with_server(scenario)
    assert seen["fork"] == (False, "Session 'b' is a copy of 'a': the same variables, imports and "
                            "working directory; the two are independent from now on.")  # fmt: skip
    assert seen["b"][1].startswith("['x', 'y']\n") and seen["a"][1].startswith("['x']\n")
    assert seen["again"][0] and "already exists" in seen["again"][1]
    assert seen["missing"][0] and "no session named 'nope'" in seen["missing"][1]


def test_a_stuck_session_can_be_restarted_and_closed_at_once():
    async def start_stuck_call(client: Client) -> asyncio.Task[tuple[bool, str]]:
        call = asyncio.create_task(execute(client, "stuck", "while True: pass", timeout=60))
        while True:
            listed = await client.call_tool("list_sessions", {})
            if any(s["status"] == "busy" for s in listed.structured_content["sessions"]):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)  # the kernel ignores SIGINT until the code runs
        return call

    async def timed(client: Client, tool: str) -> tuple[float, str]:
        started = time.monotonic()
        result = await client.call_tool(tool, {"session": "stuck"})
        assert not result.is_error, result.content[0].text
        return time.monotonic() - started, result.content[0].text

    async def scenario(client: Client) -> dict[str, Any]:
        await execute(client, "stuck", "x = 1")
        call = await start_stuck_call(client)
        restart = await timed(client, "restart_session")
        ended = await call
        fresh = await execute(client, "stuck", "'x' in globals()")
        call = await start_stuck_call(client)
        close = await timed(client, "close_session")
        closed = await call
        return {
            "restart": restart, "ended": ended, "fresh": fresh, "close": close, "closed": closed
        }  # fmt: skip

    seen = with_server(scenario)
    assert seen["restart"][0] < 10 and "restarted" in seen["restart"][1]
    assert seen["ended"][0] is False and "KernelDied" in seen["ended"][1]
    assert seen["fresh"][1].startswith("False\n")
    assert seen["close"][0] < 10 and "closed" in seen["close"][1]
    assert seen["closed"][0] is False


def test_misuse_becomes_tool_errors_with_clear_messages():
    async def scenario(client: Client) -> dict[str, tuple[bool, str]]:
        async def call(tool: str, **arguments: Any) -> tuple[bool, str]:
            result = await client.call_tool(tool, arguments)
            return result.is_error, result.content[0].text

        return {
            "bad name": await call("execute", session="../etc", code="1"),
            "unknown restart": await call("restart_session", session="ghost"),
            "unknown close": await call("close_session", session="ghost"),
            "long timeout": await call("execute", session="one", code="1", timeout=5000),
            "first": await call("execute", session="one", code="1"),
            "too many": await call("execute", session="two", code="1"),
        }

    errors = with_server(scenario, "--max-sessions", "1", "--max-timeout", "100")
    assert errors["bad name"][0] and "invalid session name '../etc'" in errors["bad name"][1]
    assert errors["unknown restart"][0]
    assert "there is no session named 'ghost' (sessions: none)" in errors["unknown restart"][1]
    assert errors["unknown close"][0] and "no session named 'ghost'" in errors["unknown close"][1]
    assert errors["long timeout"][0] and "at most 100 seconds" in errors["long timeout"][1]
    assert errors["first"][0] is False
    assert errors["too many"][0] and "max_sessions=1" in errors["too many"][1]


def test_kernel_death_is_a_normal_result_and_the_session_goes_on():
    async def scenario(client: Client) -> list[tuple[bool, str]]:
        return [
            await execute(client, "fragile", "import os\nos._exit(3)"),
            await execute(client, "fragile", "1 + 1"),
        ]

    died, after = with_server(scenario)
    assert died[0] is False
    assert died[1].startswith("KernelDied: the kernel process exited with code 3 during this call")
    assert after == (False, "2\nExecution time: a moment (time limit is a minute).")


def test_session_dirs_and_environment_policy(tmp_path):
    async def scenario(client: Client) -> list[tuple[bool, str]]:
        code = "import os\nprint(os.getcwd())\nprint(os.environ.get('MODE'), os.environ.get('MY_API_TOKEN'))"
        return [await execute(client, "s1", code), await execute(client, "s2", "import os; os.getcwd()")]

    s1, s2 = with_server(
        scenario, "--root", str(tmp_path), "--session-dirs", "--env", "MODE=test",
        env={"MY_API_TOKEN": "secret-value"},
    )  # fmt: skip
    assert s1[1].startswith(f"{tmp_path / 's1'}\ntest None\n")  # the token was scrubbed
    assert s2[1].startswith(repr(str(tmp_path / "s2")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1", "s2"]


def test_limits_on_the_command_line():
    async def scenario(client: Client) -> tuple[bool, str]:
        return await execute(client, "big", "print('x' * 50_000)")

    _, text = with_server(scenario, "--max-output-bytes", "1000")
    assert "bytes truncated" in text and len(text) < 2000


def test_export_notebook(tmp_path):
    async def scenario(client: Client) -> list[tuple[bool, str]]:
        await execute(client, "nb", "x = 2")
        await execute(client, "nb", "print(x * 21)")
        exported = await client.call_tool("export_notebook", {"session": "nb", "path": "out/run.ipynb"})
        missing_dir = await client.call_tool("export_notebook", {"session": "nb", "path": "nope/x/run.ipynb"})
        return [
            (exported.is_error, exported.content[0].text),
            (missing_dir.is_error, missing_dir.content[0].text),
        ]

    (tmp_path / "out").mkdir()
    exported, missing_dir = with_server(scenario, "--root", str(tmp_path))
    path = tmp_path / "out" / "run.ipynb"
    assert exported == (False, f"Wrote 2 cells of session 'nb' to {path}")
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert [cell.source for cell in notebook.cells] == ["x = 2", "print(x * 21)"]
    assert notebook.cells[1].outputs[0].text == "42\n"
    assert missing_dir[0] and "its directory does not exist" in missing_dir[1]


def test_export_notebook_stays_inside_the_session_directory(tmp_path):
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link-out").symlink_to(outside)  # planted inside, pointing out
    (root / "file-link.ipynb").symlink_to(outside / "target.ipynb")
    escapes = [
        "../escape.ipynb",
        "inside/../../escape.ipynb",
        str(outside / "absolute.ipynb"),
        "~/home.ipynb",
        "link-out/through-a-dir-link.ipynb",
        "file-link.ipynb",
    ]

    async def scenario(client: Client) -> list[tuple[bool, str]]:
        await execute(client, "nb", "x = 1")
        answers = []
        for path in [*escapes, "inside/../ok.ipynb"]:
            answer = await client.call_tool("export_notebook", {"session": "nb", "path": path})
            answers.append((answer.is_error, answer.content[0].text))
        return answers

    *refused, allowed = with_server(scenario, "--root", str(root))
    for path, (is_error, text) in zip(escapes, refused):
        assert is_error, (path, text)
        assert "leads outside the session's directory" in text or "must be relative" in text, text
    assert sorted(p.name for p in tmp_path.rglob("*.ipynb")) == ["file-link.ipynb", "ok.ipynb"]
    assert list(outside.iterdir()) == []
    assert allowed == (False, f"Wrote 1 cell of session 'nb' to {root / 'ok.ipynb'}")
    assert (root / "ok.ipynb").is_file()


def test_export_notebook_with_session_dirs_stays_in_the_sessions_own_directory(tmp_path):
    async def scenario(client: Client) -> tuple[bool, str]:
        await execute(client, "a", "1")
        await execute(client, "b", "2")
        answer = await client.call_tool("export_notebook", {"session": "a", "path": "../b/a.ipynb"})
        return answer.is_error, answer.content[0].text

    is_error, text = with_server(scenario, "--root", str(tmp_path), "--session-dirs", "--pool-size", "0")
    assert is_error and "leads outside the session's directory" in text
    assert not (tmp_path / "b" / "a.ipynb").exists()


def test_a_missing_root_is_reported_on_stderr_where_hosts_log_it(tmp_path):
    missing = tmp_path / "no-such-dir"
    process = subprocess.Popen(
        [sys.executable, "-m", "kernelexec", "mcp", "--root", "no-such-dir"], cwd=tmp_path,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
    )  # fmt: skip
    try:
        out, errors = process.communicate(timeout=60)  # a host keeps stdin open: exits anyway
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 2
    assert out == ""  # nothing that a client would mistake for protocol messages
    assert errors == (
        f"kernelexec: the root directory 'no-such-dir' (resolved to {missing}) does not exist or "
        "is not a directory; create it, or pass an existing one (--root)\n"
    )


def test_kernels_end_with_the_client_connection():
    async def scenario(client: Client) -> list[int]:
        pids = []
        for name in ("p1", "p2"):
            _, text = await execute(client, name, "import os; os.getpid()")
            pids.append(int(text.split("\n")[0]))
        return pids

    pids = with_server(scenario)
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(pid) for pid in pids)


def test_kernelexec_mcp_without_the_mcp_package_explains_and_exits_2(tmp_path):
    shadow = tmp_path / "mcp"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('No module named mcp')\n")
    done = subprocess.run(
        [sys.executable, "-m", "kernelexec", "mcp"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO_ROOT}"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "kernelexec mcp needs the mcp package" in done.stderr
    assert "pip install 'kernelexec[mcp]'" in done.stderr


def test_import_kernelexec_loads_no_integration():
    code = (
        "import sys, kernelexec\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('mcp', 'smolagents') "
        "or m.startswith('kernelexec.integrations')])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_kernel_that_cannot_start_is_a_tool_error():
    async def scenario(client: Client) -> tuple[bool, str]:
        return await execute(client, "a", "1")

    is_error, text = with_server(scenario, "--kernel", "no-such-kernel", "--pool-size", "0")
    assert is_error and "no kernel spec named 'no-such-kernel'" in text
