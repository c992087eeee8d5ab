"""The owner-death watchdog: a local kernel must not outlive the process that started it."""

from __future__ import annotations

import os
import subprocess


class OwnerDeathWatchdog:
    """Kills a kernel's process group when this process dies, however it dies.

    ipykernel's own parent poller is a thread in the kernel: it cannot run while the kernel is
    stuck in a long C call, and it leaves the kernel's child processes behind. The watchdog is a
    tiny ``sh`` outside the kernel, reading a pipe whose write end this process holds
    (close-on-exec, so no program it starts inherits it; a child that forks without exec, like
    multiprocessing's fork start method, keeps it until that child exits). When this process
    exits, even by SIGKILL, the read returns end-of-file and the watchdog kills the whole group
    (and everything in the kernel's cgroups, if it has any) and removes the kernel's connection
    and socket files, which a killed owner cannot. A normal shutdown writes a line first: the
    watchdog then exits without touching anything (the group id may be reused by then).
    """

    SCRIPT = (
        'if read -r _; then exit 0; fi; '
        'kill -9 -"$0" 2>/dev/null; rm -f "$@"; '  # dash's kill takes no --
        '[ -z "$KERNELEXEC_DIR" ] || rm -rf "$KERNELEXEC_DIR"; '  # a sandbox's bound directory
        'set -f; IFS="\n"; '  # the cgroups, one a line (a real newline in the script)
        'for c in $KERNELEXEC_CGROUPS; do for i in 1 2 3 4 5 6 7 8 9 10; do '
        '[ -d "$c" ] || break; '
        'for p in $(cat "$c/cgroup.procs" 2>/dev/null); do kill -9 "$p"; done; '
        'rmdir "$c" 2>/dev/null && break; sleep 0.2; done; done; exit 0'
    )

    def __init__(self, process: subprocess.Popen[bytes], write_end: int) -> None:
        self._process = process
        self._write_end = write_end

    @classmethod
    def start(cls, pgid: int | None, files: list[str], cgroups: list[str],
              directory: str | None = None) -> OwnerDeathWatchdog | None:  # fmt: skip
        if not pgid or os.name != "posix" or not os.path.exists("/bin/sh"):
            return None
        read_end, write_end = os.pipe()
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", cls.SCRIPT, str(pgid), *files],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={"PATH": os.defpath, "KERNELEXEC_CGROUPS": "\n".join(cgroups), "KERNELEXEC_DIR": directory or ""},
                start_new_session=True,  # a Ctrl-C aimed at us must not take the watchdog first
            )  # fmt: skip
        except OSError:
            os.close(write_end)
            return None
        finally:
            os.close(read_end)
        return cls(process, write_end)

    def stop(self) -> None:
        """Release the watchdog (after the kernel is gone): it reads our line and exits."""
        try:
            os.write(self._write_end, b"stop\n")
        except OSError:
            pass  # it is gone already
        os.close(self._write_end)
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
