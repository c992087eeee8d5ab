"""Messages for mistakes a new user makes: each says what went wrong and what to do."""

from __future__ import annotations

import pytest

import kernelexec as kx
from kernelexec._launch import _memory_limit_too_small

MiB = 2**20


@pytest.mark.timeout(60)
def test_a_memory_limit_too_small_to_start_says_so_at_once(monkeypatch):
    monkeypatch.setenv("KERNELEXEC_CGROUPS", "pids")  # RLIMIT_AS; test_memory.py has the cgroup's message
    with pytest.raises(kx.KernelStartError) as caught:
        kx.Session(memory_limit=64 * MiB, startup_timeout=30).start()
    message = str(caught.value)
    assert "memory_limit=64 MiB, which is probably too small" in message
    assert "the kernel already maps" in message and "MiB of address space" in message
    assert "needs about 768 MiB" in message and "raise it" in message
    assert "RLIMIT_AS: no memory cgroup can be made" in message
    # The kernel refused the limit before setting it (it used to die with code 127, or hang
    # until startup_timeout), so no wait for the startup timeout is involved.
    assert "did not finish within startup_timeout" not in message


def test_a_kernel_that_dies_under_its_memory_limit_gets_the_same_hint():
    died = kx.KernelStartError(
        "the kernel died while running kernelexec's in-kernel setup: the kernel process exited with code 127"
    )
    message = _memory_limit_too_small(700 * MiB, died, by_cgroup=False)
    assert message.startswith("the kernel could not start with memory_limit=700 MiB, which is probably too small")
    assert "(the kernel died while running kernelexec's in-kernel setup: the kernel process exited with code 127)" in message
    assert "needs about 768 MiB" in message
