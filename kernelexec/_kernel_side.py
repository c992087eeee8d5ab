"""Code that runs inside the kernel, not in the client.

The session sends this module's source to every Python kernel it starts (silently, into a private
namespace, so the user's namespace is untouched) and calls :func:`install`. kernelexec need not be
installed in the kernel's environment: only the source travels, which is why this module imports
nothing from kernelexec and stays compatible with older Pythons.

It does two jobs:

- After a cell fails, it attaches the exception's real frames and arguments to the execute_reply
  as a payload (``source: "kernelexec.error"``). Front ends ignore payload sources they do not
  know, and the payload costs no extra round trip.
- It splits big writes to stdout/stderr into bounded stream messages, so a gigabyte print reaches
  the client as a series of small messages it can truncate as they come, instead of one message
  the size of the print.
"""

import os
import sys
import traceback

PAYLOAD_SOURCE = "kernelexec.error"
_INTERNAL_DIRS = ()


def _internal_dirs():
    dirs = []
    for name in ("IPython", "ipykernel"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            dirs.append(os.path.dirname(module.__file__) + os.sep)
    return tuple(dirs)


def _display_filename(shell, filename):
    label = shell.compile.format_code_name(filename)
    return " ".join(label) if label else filename


def _user_frames(shell, error):
    frames = []
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename.startswith(_INTERNAL_DIRS):
            continue
        frames.append(
            [_display_filename(shell, frame.filename), frame.lineno, frame.name, frame.line or ""]
        )
    if isinstance(error, SyntaxError) and error.filename:
        line = (error.text or "").rstrip("\n")
        frames.append([_display_filename(shell, error.filename), error.lineno, "<module>", line])
    return frames


def _exception_info(error):
    info = {"args": [str(arg) for arg in getattr(error, "args", ())]}
    for attribute in ("name", "msg", "obj"):
        if hasattr(error, attribute):
            info[attribute] = str(getattr(error, attribute))
    return info


def _report_errors(shell):
    def post_run_cell(result):
        error = result.error_before_exec or result.error_in_exec
        if error is None:
            return
        try:
            payload = {
                "source": PAYLOAD_SOURCE,
                "frames": _user_frames(shell, error),
                "exc_info": _exception_info(error),
            }
        except Exception as failure:  # never let error reporting break the kernel
            payload = {"source": PAYLOAD_SOURCE, "frames": [], "exc_info": {}, "failure": repr(failure)}
        shell.payload_manager.write_payload(payload)

    shell.events.register("post_run_cell", post_run_cell)


def _bound_stream(stream, max_chars):
    write = stream.write
    unflushed = [0]

    def bounded_write(text):
        if not isinstance(text, str):
            return write(text)  # the stream raises its own TypeError
        for start in range(0, len(text), max_chars):
            piece = text[start : start + max_chars]
            write(piece)
            unflushed[0] += len(piece)
            if unflushed[0] >= max_chars:
                unflushed[0] = 0
                stream.flush()  # waits for the send: back-pressure on runaway printing
        return len(text)

    stream.write = bounded_write


def _flush_output_before_hard_exit():
    """``os._exit`` skips every flush: send pending output first, so the client gets it."""
    import time

    hard_exit = os._exit

    def exit_after_flushing(status):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            time.sleep(0.05)  # flush() queues the message; ZMQ's I/O thread still has to send it
        finally:
            hard_exit(status)

    os._exit = exit_after_flushing


def _limit_memory(max_bytes):
    """Cap the kernel's address space: allocations past it raise MemoryError."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        max_bytes = min(max_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, hard))


def install(max_message_chars, memory_limit=None):
    """Install kernelexec's hooks in the running IPython kernel (idempotent)."""
    global _INTERNAL_DIRS
    from IPython import get_ipython

    shell = get_ipython()
    if memory_limit:
        _limit_memory(memory_limit)
    if getattr(shell, "_kernelexec_installed", False):
        return
    shell._kernelexec_installed = True
    _INTERNAL_DIRS = _internal_dirs()
    _report_errors(shell)
    _flush_output_before_hard_exit()
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "pub_thread"):  # ipykernel's OutStream
            _bound_stream(stream, max_message_chars)
