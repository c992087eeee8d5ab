"""Display ids across outputs and calls, and call timing: the collector fed plain dicts."""

from __future__ import annotations

from datetime import datetime, timezone

from messages import PARENT, clear, display, msg, reply, status, stream, update_display

from kernelexec._collector import OutputCollector
from kernelexec._displays import DisplayRegistry


def collector(parent: str = PARENT, displays: DisplayRegistry | None = None) -> OutputCollector:
    return OutputCollector(parent, max_output_bytes=1_000_000, displays=displays)


def plain(c: OutputCollector) -> list[str]:
    return [o.data["text/plain"] for o in c.outputs() if "data" in o]


def test_a_new_display_with_a_shown_id_updates_the_earlier_outputs():
    c = collector()
    c.feed("iopub", display({"text/plain": "1"}, "here"))
    c.feed("iopub", display({"text/plain": "2"}, "there"))
    c.feed("iopub", display({"text/plain": "3"}, "here"))
    assert plain(c) == ["3", "2", "3"]


def test_without_a_shared_registry_calls_do_not_reach_each_other():
    first, second = collector(), collector()
    first.feed("iopub", display({"text/plain": "old"}, "d"))
    second.feed("iopub", update_display({"text/plain": "new"}, "d"))
    assert plain(first) == ["old"]


def test_a_shared_registry_lets_a_later_call_update_an_earlier_one():
    displays = DisplayRegistry()
    first = collector(displays=displays)
    first.feed("iopub", display({"text/plain": "old"}, "d"))
    later = OutputCollector("request-2", max_output_bytes=1_000_000, displays=displays)
    later.feed("iopub", msg("update_display_data", {"data": {"text/plain": "new"}, "metadata": {}, "transient": {"display_id": "d"}}, "request-2"))
    assert plain(first) == ["new"]
    assert later.outputs() == []  # an update is not an output of its own


def test_cleared_outputs_are_no_longer_updated():
    displays = DisplayRegistry()
    c = collector(displays=displays)
    c.feed("iopub", display({"text/plain": "a"}, "d"))
    kept = c.outputs()[0]
    c.feed("iopub", clear())
    c.feed("iopub", update_display({"text/plain": "b"}, "d"))
    assert kept.data["text/plain"] == "a"
    assert displays._nodes == {}


def test_a_delayed_clear_forgets_the_cleared_outputs_when_output_arrives():
    displays = DisplayRegistry()
    c = collector(displays=displays)
    c.feed("iopub", display({"text/plain": "a"}, "d"))
    c.feed("iopub", clear(wait=True))
    c.feed("iopub", stream("world"))
    c.feed("iopub", update_display({"text/plain": "b"}, "d"))
    assert [o.get("text") for o in c.outputs()] == ["world"]
    assert displays._nodes == {}


def test_timing_records_the_kernels_timestamps_as_nbclient_writes_them():
    c = collector()
    stamped = []
    for i, (channel, message) in enumerate(
        [("iopub", status("busy")), ("iopub", msg("execute_input", {"code": "1", "execution_count": 1})),
         ("shell", reply()), ("iopub", status("idle"))]
    ):  # fmt: skip
        message["header"]["date"] = datetime(2024, 5, 1, 12, 0, i, 1234, tzinfo=timezone.utc)
        stamped.append(message)
        c.feed(channel, message)
    assert c.timing == {
        "iopub.status.busy": "2024-05-01T12:00:00.001234Z",
        "iopub.execute_input": "2024-05-01T12:00:01.001234Z",
        "shell.execute_reply": "2024-05-01T12:00:02.001234Z",
        "iopub.status.idle": "2024-05-01T12:00:03.001234Z",
    }
