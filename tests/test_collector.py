"""The collector is a pure object: these tests feed it plain dicts, no kernel."""

from __future__ import annotations

import io
import random

import pytest
from messages import (
    PARENT, clear, display, error, execute_result, msg, reply, status, stream, update_display,
)  # fmt: skip

from kernelexec import _collector
from kernelexec._collector import OutputCollector, truncation_marker
from kernelexec._displays import DisplayRegistry


class MemorySpill:
    """A spill sink that keeps what it is given in memory (the collector does no file I/O)."""

    def __init__(self) -> None:
        self.opened = 0
        self._text = io.StringIO()

    def open(self) -> None:
        self.opened += 1

    def write(self, text: str) -> None:
        self._text.write(text)

    def clear(self) -> None:
        self._text.seek(0)
        self._text.truncate()

    def getvalue(self) -> str:
        return self._text.getvalue()


def collector(max_output_bytes: int = 1_000_000, **kwargs) -> OutputCollector:
    return OutputCollector(PARENT, max_output_bytes=max_output_bytes, **kwargs)


def test_complete_only_after_reply_and_idle():
    c = collector()
    c.feed("iopub", status("busy"))
    c.feed("shell", reply())
    assert not c.complete
    c.feed("iopub", status("idle"))
    assert c.complete


def test_idle_before_reply_is_not_complete():
    c = collector()
    c.feed("iopub", status("idle"))
    assert not c.complete
    c.feed("shell", reply())
    assert c.complete


def test_messages_of_other_requests_are_ignored():
    c = collector()
    c.feed("iopub", stream("theirs", parent="other"))
    c.feed("iopub", status("idle", parent="other"))
    c.feed("shell", reply(parent="other"))
    c.feed("iopub", stream("ours"))
    assert [o.text for o in c.outputs()] == ["ours"]
    assert not c.complete


def test_consecutive_streams_of_one_name_merge():
    c = collector()
    for part in ("a", "b"):
        c.feed("iopub", stream(part))
    c.feed("iopub", stream("E", name="stderr"))
    c.feed("iopub", stream("c"))
    outputs = c.outputs()
    assert [(o.name, o.text) for o in outputs] == [("stdout", "ab"), ("stderr", "E"), ("stdout", "c")]


def test_output_kinds_in_arrival_order():
    c = collector()
    c.feed("iopub", stream("x\n"))
    c.feed("iopub", display({"text/plain": "<img>", "image/png": "iVBOR"}))
    c.feed("iopub", execute_result("42"))
    c.feed("iopub", error())
    assert [o.output_type for o in c.outputs()] == ["stream", "display_data", "execute_result", "error"]
    assert c.outputs()[1].data["image/png"] == "iVBOR"


def test_clear_output_without_wait_clears_at_once():
    c = collector()
    c.feed("iopub", stream("old"))
    c.feed("iopub", clear())
    assert c.outputs() == []


def test_clear_output_with_wait_clears_when_the_next_output_arrives():
    c = collector()
    c.feed("iopub", stream("old"))
    c.feed("iopub", clear(wait=True))
    assert [o.text for o in c.outputs()] == ["old"]
    c.feed("iopub", stream("new"))
    assert [o.text for o in c.outputs()] == ["new"]


def test_update_display_data_replaces_the_display_with_that_id():
    c = collector()
    c.feed("iopub", display({"text/plain": "0%"}, display_id="bar"))
    c.feed("iopub", display({"text/plain": "other"}, display_id="x"))
    c.feed("iopub", update_display({"text/plain": "100%"}, display_id="bar"))
    assert [o.data["text/plain"] for o in c.outputs()] == ["100%", "other"]
    assert "transient" not in c.outputs()[0]


def test_truncation_keeps_head_and_tail_with_a_marker():
    c = collector(max_output_bytes=100)
    c.feed("iopub", stream("H" * 50))
    for _ in range(10):
        c.feed("iopub", stream("m" * 100))
    c.feed("iopub", stream("T" * 50))
    text = "".join(o.text for o in c.outputs())
    assert text.startswith("H" * 50)
    assert text.endswith("T" * 50)
    assert "[... 1,000 bytes truncated ...]" in text
    assert c.truncated_bytes == 1000


def test_kept_bytes_stay_bounded_whatever_is_printed():
    c = collector(max_output_bytes=1000)
    for _ in range(5000):
        c.feed("iopub", stream("x" * 1000))
    kept = sum(len(o.text) for o in c.outputs() if "truncated" not in o.text)
    assert kept == 1000
    assert c.truncated_bytes == 5000 * 1000 - 1000


def test_truncation_counts_utf8_bytes_and_never_splits_a_character():
    c = collector(max_output_bytes=10)
    c.feed("iopub", stream("é" * 20))  # 40 bytes
    outputs = c.outputs()
    kept = outputs[0].text + outputs[-1].text
    assert set(kept) == {"é"}
    assert len(kept.encode()) <= 10
    assert c.truncated_bytes == 40 - len(kept.encode())


def test_errors_are_never_dropped_by_truncation():
    c = collector(max_output_bytes=20)
    c.feed("iopub", error("KeyError", "k"))
    for _ in range(20):
        c.feed("iopub", stream("y" * 30))
    assert any(o.output_type == "error" for o in c.outputs())


def test_displays_count_against_the_limit():
    c = collector(max_output_bytes=1000)
    for i in range(100):
        c.feed("iopub", display({"text/plain": str(i), "image/png": "A" * 500}))
    assert c.truncated_bytes > 0
    assert len(c.outputs()) < 10


def test_clear_output_resets_the_budget():
    c = collector(max_output_bytes=100)
    for i in range(1000):
        c.feed("iopub", clear(wait=True))
        c.feed("iopub", stream(f"progress {i}\n"))
    assert [o.text for o in c.outputs()] == ["progress 999\n"]
    assert c.truncated_bytes == 0


def test_spill_file_gets_the_full_text_once_truncation_starts():
    spill = MemorySpill()
    c = collector(max_output_bytes=10, spill=spill)
    c.feed("iopub", stream("0123456789" * 3))
    c.feed("iopub", stream("abc"))
    assert spill.getvalue() == "0123456789" * 3 + "abc"


def test_no_spill_file_is_opened_without_truncation():
    spill = MemorySpill()
    c = collector(max_output_bytes=100, spill=spill)
    c.feed("iopub", stream("short"))
    assert spill.opened == 0


def test_on_output_sees_each_output_as_it_arrives():
    seen = []
    c = collector(on_output=seen.append)
    c.feed("iopub", stream("a"))
    c.feed("iopub", stream("b"))
    c.feed("iopub", execute_result("1"))
    assert [o.get("text") or o.data["text/plain"] for o in seen] == ["a", "b", "1"]


def test_a_failing_callback_does_not_lose_outputs(caplog):
    def broken(_):
        raise RuntimeError("callback bug")

    c = collector(on_output=broken)
    c.feed("iopub", stream("kept"))
    assert [o.text for o in c.outputs()] == ["kept"]
    assert "on_output callback raised" in caplog.text


# Display updates count against the limit


def kept_bytes(c: OutputCollector) -> int:
    return sum(len(str(o.get("text", ""))) + len(str(o.get("data", ""))) for o in c.outputs())


def test_a_display_update_too_big_for_the_limit_is_dropped_and_counted():
    c = collector(max_output_bytes=1000)
    c.feed("iopub", display({"text/plain": "0%"}, display_id="bar"))
    c.feed("iopub", stream("after\n"))
    c.feed("iopub", update_display({"text/plain": "A" * 5_000_000}, display_id="bar"))
    assert c.truncated_bytes == 5_000_000
    # the marker stands where the display was
    assert [o.text for o in c.outputs()] == [truncation_marker(5_000_000), "after\n"]


def test_a_display_update_in_the_tail_is_trimmed_like_a_display():
    c = collector(max_output_bytes=1000)
    c.feed("iopub", stream("h" * 500))
    c.feed("iopub", display({"text/plain": "0%"}, display_id="bar"))
    c.feed("iopub", update_display({"text/plain": "A" * 5_000_000}, display_id="bar"))
    assert c.truncated_bytes == 5_000_000
    assert kept_bytes(c) < 1000 + 100


def test_a_repeated_display_id_does_not_smuggle_a_big_bundle_into_earlier_outputs():
    c = collector(max_output_bytes=1000)
    c.feed("iopub", display({"text/plain": "0%"}, display_id="bar"))
    c.feed("iopub", display({"text/plain": "A" * 5_000_000}, display_id="bar"))
    assert c.truncated_bytes == 10_000_000
    assert kept_bytes(c) < 1000 + 100


def test_an_update_too_big_for_the_call_leaves_an_earlier_calls_output_alone():
    displays = DisplayRegistry()
    first = collector(max_output_bytes=1000, displays=displays)
    first.feed("iopub", display({"text/plain": "old"}, display_id="d"))
    later = OutputCollector("request-2", max_output_bytes=1000, displays=displays)
    big = {"data": {"text/plain": "A" * 5_000_000}, "metadata": {}, "transient": {"display_id": "d"}}
    later.feed("iopub", msg("update_display_data", big, "request-2"))
    assert first.outputs()[0].data["text/plain"] == "old"
    assert later.truncated_bytes == 5_000_000


def test_small_display_updates_cost_nothing():
    c = collector(max_output_bytes=1000)
    c.feed("iopub", display({"text/plain": "0%"}, display_id="bar"))
    for i in range(1000):
        c.feed("iopub", update_display({"text/plain": f"{i / 10}%"}, display_id="bar"))
    assert c.truncated_bytes == 0
    assert [o.data["text/plain"] for o in c.outputs()] == ["99.9%"]


# Truncation of long streams: exact, and each message costs its own size


def _fit(chars: list[tuple[str, str]], max_bytes: int) -> int:
    """How many of ``chars`` fit in ``max_bytes`` bytes of UTF-8."""
    used = 0
    for count, (_, char) in enumerate(chars):
        used += len(char.encode())
        if used > max_bytes:
            return count
    return len(chars)


def _streams(chars: list[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: list[tuple[str, str]] = []
    for name, char in chars:
        if merged and merged[-1][0] == name:
            merged[-1] = (name, merged[-1][1] + char)
        else:
            merged.append((name, char))
    return merged


@pytest.mark.parametrize(("seed", "max_output_bytes", "names"), [
    (1, 4001, ["stdout"]), (2, 10_000, ["stdout"]), (3, 3000, ["stdout", "stderr"]), (4, 257, ["stdout", "stderr"]),
])  # fmt: skip
def test_truncation_is_exact_for_many_pieces_of_varied_sizes(seed, max_output_bytes, names):
    rng = random.Random(seed)
    alphabet = "ab\n" + "é€𝄞"  # one to four bytes a character
    c = collector(max_output_bytes=max_output_bytes)
    chars: list[tuple[str, str]] = []  # what was printed, a (stream, character) at a time
    for _ in range(400):
        name = rng.choice(names)
        piece = "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 3, 50, 700, 5000])))
        c.feed("iopub", stream(piece, name=name))
        chars.extend((name, char) for char in piece)
    head_limit = max_output_bytes // 2
    head = chars[: _fit(chars, head_limit)]
    rest = chars[len(head) :]
    tail = rest[len(rest) - _fit(rest[::-1], max_output_bytes - head_limit) :]
    dropped = sum(len(char.encode()) for _, char in rest[: len(rest) - len(tail)])
    assert c.truncated_bytes == dropped > 0
    expected = [*_streams(head), ("stdout", truncation_marker(dropped)), *_streams(tail)]
    assert [(o.name, o.text) for o in c.outputs()] == expected


def test_each_stream_message_is_measured_once_not_the_whole_tail(monkeypatch):
    # The bytes of text the collector measures stand for its work: re-reading the tail on every
    # message once truncation has started made a 1 GB print cost minutes of CPU.
    measured = []
    size = _collector._size
    monkeypatch.setattr(_collector, "_size", lambda text: measured.append(len(text)) or size(text))
    c = collector(max_output_bytes=1_000_000)
    for _ in range(1000):
        c.feed("iopub", stream("x" * 4096))
    assert c.truncated_bytes == 1000 * 4096 - 1_000_000
    assert sum(measured) <= 2 * 1000 * 4096


# The spill file after clear_output, and what it records of an error


def test_spill_file_after_clear_output_holds_only_what_is_visible():
    spill = MemorySpill()
    c = collector(max_output_bytes=100, spill=spill)
    c.feed("iopub", stream("A" * 200))
    c.feed("iopub", clear())
    c.feed("iopub", stream("B" * 40))
    c.feed("iopub", stream("C" * 200))
    assert c.truncated_bytes == 140
    assert spill.getvalue() == "B" * 40 + "C" * 200


def test_spill_file_is_emptied_by_a_clear_that_ends_the_truncation():
    spill = MemorySpill()
    c = collector(max_output_bytes=100, spill=spill)
    c.feed("iopub", stream("A" * 200))
    c.feed("iopub", clear(wait=True))
    assert spill.getvalue() == "A" * 200  # still shown until the next output
    c.feed("iopub", stream("B" * 40))
    assert c.truncated_bytes == 0 and spill.getvalue() == ""


def test_spill_file_and_result_text_agree_on_an_error_without_traceback():
    spill = MemorySpill()
    c = collector(max_output_bytes=10, spill=spill)
    c.feed("iopub", stream("x" * 20))
    c.feed("iopub", msg("error", {"ename": "ValueError", "evalue": "bad", "traceback": []}))
    assert spill.getvalue() == "x" * 20 + "ValueError: bad\n"
    assert _collector.output_text(c.outputs()[-1]) == "ValueError: bad\n"


# Output the kernel withheld (see _kernel_bound)


class FileSplicingSpill(MemorySpill):
    """A spill sink whose ``splice`` reads the kernel's file from bytes in memory."""

    def __init__(self, kernel_file: bytes) -> None:
        super().__init__()
        self.kernel_file = kernel_file

    def splice(self, ranges) -> None:
        for offset, length in ranges:
            self.write(self.kernel_file[offset : offset + length].decode("utf-8"))


def test_a_withheld_middle_counts_as_if_it_had_been_received():
    text = "h" * 60 + "é" * 300 + "t" * 60  # the kernel withholds the é's: 600 bytes
    whole_spill, kernel_spill = MemorySpill(), FileSplicingSpill(b"junk" + "é".encode() * 300)
    whole = collector(max_output_bytes=100, spill=whole_spill)
    whole.feed("iopub", stream(text))
    bounded = collector(max_output_bytes=100, spill=kernel_spill)
    bounded.feed("iopub", stream("h" * 60))
    notice = {"name": "stdout", "withheld_bytes": 600, "spill_ranges": [[4, 600]]}
    bounded.feed("iopub", msg(_collector.OUTPUT_WITHHELD, notice))
    bounded.feed("iopub", stream("t" * 60))
    assert bounded.outputs() == whole.outputs() and bounded.truncated_bytes == whole.truncated_bytes == 620
    assert kernel_spill.getvalue() == whole_spill.getvalue() == text
