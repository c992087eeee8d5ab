"""Output bounded in the kernel gives the result bounding in the client gives.

Every flood runs twice on real kernels: with ``bound_output_in_kernel`` (the default: the kernel
withholds the middle) and without (every byte crosses the wire and the collector drops it).
``outputs``, ``text``, ``truncated_bytes`` and the spill file must be the same, and the bounded
run must have received less text (else the comparison proves nothing).
"""

from __future__ import annotations

import contextlib
import json
import os
import re

import pytest

import kernelexec as kx
from kernelexec._collector import truncation_marker

MAX = 10_000  # head 5,000 bytes, tail 5,000
HEAD = MAX // 2


@pytest.fixture(scope="module")
def sessions(private_runtime_dir, tmp_path_factory):
    """``(bound in the kernel?, spill_dir?)`` -> a session, one each for the module."""
    with contextlib.ExitStack() as stack:
        made = {}
        for bound in (True, False):
            for spill in (True, False):
                spill_dir = str(tmp_path_factory.mktemp("spill")) if spill else None
                made[bound, spill] = stack.enter_context(
                    kx.Session(
                        timeout=60, max_output_bytes=MAX, spill_dir=spill_dir, bound_output_in_kernel=bound,
                        env={"PYTEST_CURRENT_TEST": None},  # else ipykernel leaves fds 1 and 2 to pytest
                    )
                )
        yield made


def run(session: kx.Session, code: str) -> tuple[kx.ExecutionResult, int, str | None]:
    """The result, the stream characters ``on_output`` saw, and the spill file's text."""
    received = []

    def count(node):
        if node.output_type == "stream":
            received.append(len(node.text))

    result = session.execute(code, on_output=count)
    spilled = None
    if result.output_path is not None:
        with open(result.output_path, encoding="utf-8") as file:
            spilled = file.read()
        os.unlink(result.output_path)
    if session.options.spill_dir:
        assert os.listdir(session.options.spill_dir) == []  # the kernel's file is gone too
    return result, sum(received), spilled


def same_counts(text: str) -> str:
    """The sessions have run different numbers of calls: their execution counts differ."""
    return re.sub(r"In\[\d+\]|\"execution_count\": \d+", "", text)


def assert_same(sessions, code: str, *, spill: bool, withheld: bool = True) -> kx.ExecutionResult:
    ours, ours_received, ours_spilled = run(sessions[True, spill], code)
    theirs, theirs_received, theirs_spilled = run(sessions[False, spill], code)
    assert ours.status == theirs.status
    assert same_counts(json.dumps(ours.outputs)) == same_counts(json.dumps(theirs.outputs))
    assert same_counts(ours.text) == same_counts(theirs.text)
    assert ours.truncated_bytes == theirs.truncated_bytes
    assert ours_spilled == theirs_spilled
    assert (ours.output_path is None) == (theirs.output_path is None) == (not spill or not theirs.truncated_bytes)
    if withheld:  # (the kernel sends its tail every 0.2 s: a slow flood sends more)
        assert ours_received < theirs_received - MAX, "the kernel did not withhold the middle"
    return ours


@pytest.mark.parametrize("spill", [False, True], ids=["no-spill", "spill"])
def test_stdout_flood(sessions, spill):
    result = assert_same(sessions, "for i in range(30_000):\n    print(i)", spill=spill)
    assert result.truncated_bytes > 100_000


@pytest.mark.parametrize("spill", [False, True], ids=["no-spill", "spill"])
def test_one_huge_print(sessions, spill):
    assert_same(sessions, "print('H' * 100 + 'x' * 3_000_000 + 'T' * 100)", spill=spill)


@pytest.mark.parametrize("spill", [False, True], ids=["no-spill", "spill"])
def test_stdout_and_stderr_in_turns(sessions, spill):
    code = (
        "import sys\n"
        "for block in range(4):\n"
        "    stream = sys.stderr if block % 2 else sys.stdout\n"
        "    for i in range(3_000):\n"
        "        print(block, i, file=stream)\n"
        "    stream.flush()\n"  # else which text shares a message with which depends on timing
    )
    assert_same(sessions, code, spill=spill)


def test_stdout_and_stderr_line_by_line_keep_their_order(sessions):
    # Which lines share a message depends on timing with either bound, so only each stream's
    # own order is checked: what is kept of it is in the order it was printed.
    code = "import sys\nfor i in range(20_000):\n    print(i)\n    print(-i, file=sys.stderr)"
    result, received, _ = run(sessions[True, False], code)
    assert result.ok and result.truncated_bytes > 100_000 and received < 100_000
    assert result.stdout.startswith("0\n1\n2\n") and result.outputs[-1].text.endswith("19999\n")
    checked = 0
    for name in ("stdout", "stderr"):
        # The head and the tail are cut by bytes: the line at either side of the cut may be part
        # of one ("19996" kept as "6"), so the ends of each part are left out.
        head, _, tail = getattr(result, name).partition(truncation_marker(result.truncated_bytes))
        numbers = [abs(int(line)) for part in (head, tail) for line in part.split("\n")[1:-1] if line]
        assert numbers == sorted(numbers), name
        checked += len(numbers)
    assert checked > 1000, checked  # how the kept lines divide between the streams depends on timing


@pytest.mark.parametrize("spill", [False, True], ids=["no-spill", "spill"])
def test_fd_writes_mixed_with_prints(sessions, spill):
    code = (
        "import os\n"
        "for i in range(8_000):\n"
        "    os.write(1, b'fd %d\\n' % i)\n"
        "    print('print', i)\n"
    )
    assert_same(sessions, code, spill=spill)


@pytest.mark.parametrize(
    "size", [HEAD, HEAD + 1, MAX - 1, MAX, MAX + 1, MAX + HEAD, 3 * MAX, 3 * MAX + 1, 30 * MAX]
)
def test_output_ending_at_the_boundaries(sessions, size):
    code = f"import sys\nfor i in range({size}):\n    sys.stdout.write('x' if i % 100 else '\\n')"
    assert_same(sessions, code, spill=True, withheld=size == 30 * MAX)


@pytest.mark.parametrize("spill", [False, True], ids=["no-spill", "spill"])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_unicode_split_across_the_boundaries(sessions, spill, offset):
    # Characters of 2, 3 and 4 bytes straddle the head's end and the tail's start.
    code = (
        f"import sys\nsys.stdout.write('a' * {HEAD - 5 + offset})\n"
        "for i in range(20_000):\n    sys.stdout.write('é€😀'[i % 3])\n"
        "sys.stdout.write(' end')\n"
    )
    assert_same(sessions, code, spill=spill)


@pytest.mark.parametrize("spill", [False, True], ids=["no-spill", "spill"])
def test_progress_with_clear_output(sessions, spill):
    code = (
        "from IPython.display import clear_output, display\n"
        "for step in range(30):\n"
        "    clear_output(wait=True)\n"
        "    print('x' * 3_000 * step)\n"
        "    display(step)\n"
        "clear_output(wait=True)\n"
        "print('last' * 20_000)\n"
    )
    assert_same(sessions, code, spill=spill)


@pytest.mark.parametrize("spill", [False, True], ids=["no-spill", "spill"])
def test_displays_and_an_error_among_a_flood(sessions, spill):
    code = (
        "from IPython.display import display\n"
        "for i in range(30_000):\n"
        "    print(i)\n"
        "    if i % 5_000 == 0:\n"
        "        display({'i': i})\n"
        "raise ValueError('after the flood')\n"
    )
    result = assert_same(sessions, code, spill=spill)
    assert result.error is not None and result.error.ename == "ValueError"


def test_the_next_call_starts_a_new_bound(sessions):
    session = sessions[True, False]
    flood, _, _ = run(session, "print('x' * 1_000_000)")
    small, _, _ = run(session, "print('small')")
    assert flood.truncated_bytes and small.stdout == "small\n" and small.truncated_bytes == 0


# clear_output(wait=True) coalesced in the kernel: the client's result is the one it gets from
# every message, and (for the loops) it got far fewer of them.

PROGRESS = "from IPython.display import clear_output, display, update_display\nimport ctypes, os, sys, time\n"


@pytest.mark.parametrize("spill", [False, True], ids=["no-spill", "spill"])
def test_a_progress_loop_is_coalesced(sessions, spill):
    code = PROGRESS + (
        "for i in range(3_000):\n"
        "    clear_output(wait=True)\n"
        "    print(f'step {i}')\n"
        "    if i % 7 == 0:\n"
        "        print('warn', i, file=sys.stderr)\n"
    )
    result = assert_same(sessions, code, spill=spill)
    assert result.stdout == "step 2999\n"


@pytest.mark.parametrize(
    "ending",
    [
        "",  # a clear with nothing after it: the text before it stays
        "42",  # a result after the clear: it clears
        "raise ValueError('after the clear')",
        "display('after')",
        "update_display('updated', display_id='d')",  # an update does not set the clear off
        "os.write(1, b'fd after\\n')",
        "sys.stdout.flush()",
        "clear_output(wait=True)",
        "clear_output()\nprint('after an immediate clear')",
    ],
)
def test_what_follows_a_waiting_clear(sessions, ending):
    code = PROGRESS + (
        "display('shown', display_id='d')\n"
        "for i in range(200):\n"
        "    clear_output(wait=True)\n"
        "    print('step', i)\n"
        "    print('err', i, file=sys.stderr)\n"
        "print('before the last clear')\n"
        # written holding the GIL, so that ipykernel's pipe reader cannot take it before the clear
        "ctypes.PyDLL(None).write(1, b'fd before the clear\\n', 19)\n"
        "clear_output(wait=True)\n"
    ) + ending
    ours, theirs = (run(sessions[bound, False], code)[0] for bound in (True, False))
    for result in (ours, theirs):
        streams = [node.name for node in result.outputs if node.output_type == "stream"]
        assert streams[:1] in ([], ["stdout"]), result.outputs  # each step printed to stdout first
    # Which text of stdout and stderr shares a message depends on timing, with either bound.
    assert shown(ours) == shown(theirs)


def shown(result: kx.ExecutionResult) -> tuple:
    """What the client shows, but for how stdout and stderr text were grouped into messages."""
    others = [node for node in result.outputs if node.output_type != "stream"]
    return result.stdout, result.stderr, same_counts(json.dumps(others)), result.truncated_bytes


def test_text_before_a_waiting_clear_is_shown_while_the_call_goes_on(sessions):
    code = PROGRESS + "print('status')\nclear_output(wait=True)\ntime.sleep(1.5)\nprint('done')"
    seen = []
    result = sessions[True, False].execute(code, on_output=lambda node: seen.append(node.get("text")))
    assert result.stdout == "done\n"
    assert "status\n" in seen, seen  # sent with the clear after it by the 0.2 s timer


def test_output_of_post_execute_callbacks_follows_a_waiting_clear(sessions):
    # matplotlib's inline backend shows figures from a post_execute callback, after the code
    register = "from IPython.display import display\n_show = lambda: display('figure')\nget_ipython().events.register('post_execute', _show)"
    unregister = "get_ipython().events.unregister('post_execute', _show)"
    for bound in (True, False):
        assert sessions[bound, False].execute(register).ok
    try:
        result = assert_same(sessions, PROGRESS + "print('before')\nclear_output(wait=True)", spill=False, withheld=False)
        assert "before" not in result.text and "figure" in result.text
    finally:
        for bound in (True, False):
            sessions[bound, False].execute(unregister)


@pytest.mark.parametrize("bound", [True, False], ids=["kernel-bound", "client-bound"])
def test_fd_output_stays_before_a_display_or_clear_after_it(sessions, bound):
    # written holding the GIL, so that the pipe's reader thread cannot forward it first
    write = "ctypes.PyDLL(None).write(1, b'fd\\n', 3)\n"
    code = PROGRESS + write + "display('shown')\n" + write + "clear_output(wait=True)\n"
    for _ in range(3):
        result, _, _ = run(sessions[bound, False], code)
        assert [node.get("text", node.get("data", {}).get("text/plain")) for node in result.outputs] == [
            "fd\n", "'shown'", "fd\n"
        ]


def test_a_write_assigned_to_a_stream_is_wrapped_and_put_back(sessions):
    # IPython 9 assigns a recording wrapper to sys.stdout.write around every cell
    code = PROGRESS + (
        "seen = []\n"
        "inner = sys.stdout.write\n"
        "def recording(text):\n    seen.append(text)\n    return inner(text)\n"
        "sys.stdout.write = recording\n"
        "ctypes.PyDLL(None).write(1, b'fd\\n', 3)\n"  # still before the print that follows
        "print('after')\n"
        "wrapped = sys.stdout.write is not recording and sys.stdout.write.kernelexec_inner is recording\n"
        "del sys.stdout.write\n"
        "print(seen, wrapped, sys.stdout.write is not recording)\n"
    )
    result, _, _ = run(sessions[True, False], code)
    assert result.stdout == "fd\nafter\n['after', '\\n'] True True\n", result.text


@pytest.mark.parametrize("bound", [True, False], ids=["kernel-bound", "client-bound"])
def test_text_after_a_coalesced_clear_keeps_its_order(sessions, bound):
    # the forgotten stderr text must not leave its age behind: the newer stdout text goes first
    code = PROGRESS + (
        "print('e0', file=sys.stderr)\nclear_output(wait=True)\nprint('o1')\nprint('e1', file=sys.stderr)"
    )
    for _ in range(3):
        result, _, _ = run(sessions[bound, False], code)
        assert [(node.name, node.text) for node in result.outputs] == [("stdout", "o1\n"), ("stderr", "e1\n")]
