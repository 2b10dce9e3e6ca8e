"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def median_rate(fn: Callable[[], int], repeats: int) -> float:
    """Median over `repeats` calls of items/second, where fn() returns the items it processed."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)
