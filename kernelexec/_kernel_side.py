"""Code that runs inside the kernel, not in the client (part 3 of 3, after ``_kernel_streams``
and ``_kernel_fds``, whose names it uses: the three are sent as one text).

The session sends this module's source to every Python kernel it starts (silently, into a private
namespace, so the user's namespace is untouched) and calls :func:`install`. kernelexec need not be
installed in the kernel's environment: only the source travels, which is why this module imports
nothing from kernelexec and stays compatible with older Pythons.

What it installs:

- After a cell fails, it attaches the exception's real frames and arguments to the execute_reply
  as a payload (``source: "kernelexec.error"``). Front ends ignore payload sources they do not
  know, and the payload costs no extra round trip.
- Bounded output: big writes to stdout/stderr become a series of bounded stream messages the
  client truncates as they come; a display or result bigger than the output budget becomes a
  short note; the IOPub socket waits for a slow client instead of dropping messages; a flood is
  sent at the client's pace; output written to file descriptors 1 and 2 reaches the call that
  wrote it, in order with the rest of its output; the streams get a ``buffer`` for code that
  writes bytes.
- Limits and exits: the session's memory and process limits, ``os._exit`` sending pending output
  first, ``exit()``/``quit()`` leaving the session's kernel alone, and ``SystemExit`` without
  IPython's "To exit: use 'exit'..." warning.
"""

import os
import sys
import traceback

# Set by install() from the client's values (kernelexec._wire).
PAYLOAD_SOURCE = "kernelexec.error"  # the execute_reply payload that carries the real frames
STDERR_KEEP_BYTES = 1024 * 1024  # the kernel's stderr file is emptied past this many bytes
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
        if frame.filename.startswith(_INTERNAL_DIRS) or frame.filename == "<kernelexec>":
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


def _keep_kernel_on_exit(shell):
    """IPython's ``exit()``/``quit()`` would end the kernel once the call is over, taking the
    session's state with it; in a session only the owner ends the kernel."""

    def ask_exit():
        sys.stderr.write("exit() and quit() do not end a kernelexec session; its state is kept.\n")

    shell.ask_exit = ask_exit


def _quiet_system_exit():
    """IPython follows a ``SystemExit`` with ``UserWarning: To exit: use 'exit', 'quit', or
    Ctrl-D.``, advice for a terminal user; in a session the error output says it all."""
    import warnings

    warnings.filterwarnings(
        "ignore", message="To exit: use 'exit', 'quit', or Ctrl-D", category=UserWarning
    )


def _flush_output_before_hard_exit():
    """``os._exit`` skips every flush: send pending output first, so the client gets it."""
    import time

    hard_exit = os._exit
    kernel_pid = os.getpid()

    def exit_after_flushing(status):
        if os.getpid() != kernel_pid:  # a forked child: its output is not ours to wait for
            hard_exit(status)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            time.sleep(0.05)  # flush() queues the message; ZMQ's I/O thread still has to send it
        finally:
            hard_exit(status)

    os._exit = exit_after_flushing


def _refuse_a_limit_below_use(memory_limit):
    """An address-space limit below what the kernel maps already kills or hangs it: say so."""
    try:
        with open("/proc/self/status") as status:
            in_use = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return
    if memory_limit <= in_use:
        raise MemoryError(f"the kernel already maps {in_use / 2**20:.0f} MiB of address space")


def _lower_limit(which, value):
    """Lower a resource limit (soft and hard, so the code cannot raise it back)."""
    import resource

    limit = getattr(resource, which)
    _, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(limit, (value, value))


def _drop_huge_displays(shell, max_bundle_chars):
    """Replace a display or result bigger than the call's whole output budget by a short note.

    The client would drop it anyway, but only after receiving and decoding all of it: a 1 GB
    ``display`` or last expression must not cost the client 1 GB. The note carries how much was
    dropped (``metadata.kernelexec.dropped_bytes``), so the result still counts it.
    """

    def size(value):
        text = value if isinstance(value, str) else str(value)
        return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))

    def drop(msg):
        content = msg.get("content", {})
        data = content.get("data")
        if not isinstance(data, dict):
            return msg
        dropped = sum(size(value) for value in data.values())
        if dropped <= max_bundle_chars:
            return msg
        kinds = ", ".join(sorted(data))
        content["data"] = {"text/plain": f"[{kinds}: {dropped:,} bytes, more than max_output_bytes]"}
        content["metadata"] = {"kernelexec": {"dropped_bytes": dropped}}
        return msg

    for publisher in (shell.display_pub, shell.displayhook):
        if hasattr(publisher, "register_hook"):  # ipykernel >= 7 for the displayhook
            publisher.register_hook(drop)


def _open_fds():
    fds = {}
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            fds[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass
    return fds


def _note_machinery_fds(shell, before):
    """Record the kernel's own fds, which copies made by fork close (see ``_fork_side``): all
    of them when the kernel is new (no user code has run), else those this install opened."""
    machinery = getattr(shell, "_kernelexec_fork_machinery", None)
    now = dict((fd, target) for fd, target in _open_fds().items() if fd > 2)
    if machinery is None:
        shell._kernelexec_fork_machinery = now
    else:
        machinery.update((fd, target) for fd, target in now.items() if before.get(fd) != target)


def install(
    max_message_chars, memory_limit=None, max_processes=None, max_bundle_chars=None,
    payload_source=PAYLOAD_SOURCE, stderr_keep_bytes=STDERR_KEEP_BYTES,
):
    """Install kernelexec's hooks in the running IPython kernel (idempotent).

    A copy of the kernel made by fork (``_fork_side``) installs the hooks on its new machinery
    with the code kept in ``shell._kernelexec_namespace``: the client need not send it again.
    """
    global _INTERNAL_DIRS, PAYLOAD_SOURCE, STDERR_KEEP_BYTES
    from IPython import get_ipython

    PAYLOAD_SOURCE, STDERR_KEEP_BYTES = payload_source, stderr_keep_bytes

    shell = get_ipython()
    fds_before = _open_fds()
    if memory_limit:
        _refuse_a_limit_below_use(memory_limit)
        _lower_limit("RLIMIT_AS", memory_limit)  # over-allocation: a clean MemoryError
    if max_processes:
        _lower_limit("RLIMIT_NPROC", max_processes)
    if getattr(shell, "_kernelexec_installed", False):
        return
    shell._kernelexec_installed = True
    shell._kernelexec_namespace = globals()
    _INTERNAL_DIRS = _internal_dirs()
    _report_errors(shell)
    _InterruptDelivery.install(shell)
    _flush_output_before_hard_exit()
    _keep_kernel_on_exit(shell)
    _quiet_system_exit()
    if max_bundle_chars:
        _drop_huge_displays(shell, max_bundle_chars)
    streams = [stream for stream in (sys.stdout, sys.stderr) if hasattr(stream, "register_hook")]
    if streams:  # ipykernel's OutStreams
        _bound_iopub(streams, max_message_chars)
        _take_over_writes(shell, streams, max_message_chars)
    _note_machinery_fds(shell, fds_before)
