"""LiveOutputs, the running cell's outputs as on_output reports them: fed plain nodes."""

from __future__ import annotations

from nbformat import NotebookNode

from kernelexec._live import LiveOutputs


def stream(text: str, name: str = "stdout") -> NotebookNode:
    return NotebookNode(output_type="stream", name=name, text=text)


def test_streams_merge_and_clear_output_empties_what_was_shown():
    live = LiveOutputs(max_bytes=1000)
    for node in (stream("a"), stream("b"), stream("!", "stderr"), stream("c")):
        live.add(node)
    assert [(o.name, o.text) for o in live.outputs()] == [("stdout", "ab"), ("stderr", "!"), ("stdout", "c")]
    live.add(NotebookNode(output_type="clear_output"))
    live.add(stream("after"))
    assert [o.text for o in live.outputs()] == ["after"]


def test_displays_are_the_collectors_own_nodes_so_updates_reach_them():
    live = LiveOutputs(max_bytes=1000)
    display = NotebookNode(output_type="display_data", data={"text/plain": "first"}, metadata={})
    live.add(display)
    display.data = {"text/plain": "second"}  # what the collector does on update_display_data
    live.add(NotebookNode(output_type="update_display_data", data={}, metadata={}, transient={}))
    assert live.outputs() == [display] and live.outputs()[0].data["text/plain"] == "second"


def test_the_reported_nodes_are_not_changed():
    live, first = LiveOutputs(max_bytes=1000), stream("a")
    live.add(first)
    live.add(stream("b"))
    live.outputs()
    assert first.text == "a"  # the user's on_output saw it as it came


def test_past_the_budget_the_oldest_text_gives_way_with_a_marker():
    live = LiveOutputs(max_bytes=10)
    for index in range(8):
        live.add(stream(f"line {index}\n"))  # 7 bytes each
    marker, kept = live.outputs()
    assert kept.text == "line 7\n" and live.dropped_bytes == 49
    assert "49 bytes truncated" in marker.text
