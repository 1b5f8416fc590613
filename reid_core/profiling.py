"""Per-stage wall-clock seconds and peak resident memory (sampled), for the run profile."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import psutil


class StageProfile(dict):
    """Filled by :func:`profile_stage`: ``seconds`` and ``peak_rss_mb``."""


@contextmanager
def profile_stage(interval: float = 0.05) -> Iterator[StageProfile]:
    """Measure wall-clock time and peak RSS (process + children) while the block runs."""
    proc = psutil.Process()
    result = StageProfile()
    peak = [0]
    stop = threading.Event()

    def rss() -> int:
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss())
            except psutil.Error:
                pass
            stop.wait(interval)

    peak[0] = rss()
    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], rss())
        result["seconds"] = time.perf_counter() - start
        result["peak_rss_mb"] = peak[0] / 2**20
