"""Plain-dict Jupyter messages for feeding the collector, as jupyter_client deserialises them."""

from __future__ import annotations

from typing import Any

PARENT = "request-1"


def msg(msg_type: str, content: dict[str, Any], parent: str = PARENT) -> dict[str, Any]:
    return {
        "header": {"msg_type": msg_type, "msg_id": f"{msg_type}-id"},
        "parent_header": {"msg_id": parent} if parent else {},
        "content": content,
        "metadata": {},
    }


def stream(text: str, name: str = "stdout", parent: str = PARENT) -> dict[str, Any]:
    return msg("stream", {"name": name, "text": text}, parent)


def display(data: dict[str, Any], display_id: str | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"data": data, "metadata": {}}
    if display_id:
        content["transient"] = {"display_id": display_id}
    return msg("display_data", content)


def update_display(data: dict[str, Any], display_id: str) -> dict[str, Any]:
    return msg("update_display_data", {"data": data, "metadata": {}, "transient": {"display_id": display_id}})


def execute_result(text: str, count: int = 1) -> dict[str, Any]:
    return msg("execute_result", {"data": {"text/plain": text}, "metadata": {}, "execution_count": count})


def error(ename: str = "ValueError", evalue: str = "bad") -> dict[str, Any]:
    return msg("error", {"ename": ename, "evalue": evalue, "traceback": [f"\x1b[31m{ename}\x1b[0m: {evalue}"]})


def clear(wait: bool = False) -> dict[str, Any]:
    return msg("clear_output", {"wait": wait})


def status(state: str, parent: str = PARENT) -> dict[str, Any]:
    return msg("status", {"execution_state": state}, parent)


def reply(status_: str = "ok", count: int = 1, parent: str = PARENT) -> dict[str, Any]:
    return msg("execute_reply", {"status": status_, "execution_count": count, "payload": []}, parent)
