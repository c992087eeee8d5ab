"""Timing helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_calls(run: Callable[[], object], calls: int) -> list[float]:
    """Seconds taken by each of ``calls`` calls of ``run``."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return samples


def ms(samples: list[float]) -> float:
    """The median of ``samples`` in milliseconds."""
    return statistics.median(samples) * 1000
