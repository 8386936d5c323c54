"""Small numeric helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import httpx


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median."""
    return statistics.median(values)


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.002) -> None:
    """Poll `check` until it is true; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout:.0f}s")
        time.sleep(step)


def sequential_latencies(url: str, n: int, headers: dict[str, str] | None = None,
                         warmup: int = 50) -> list[float]:
    """Milliseconds of `n` sequential keep-alive GETs to `url` (each must answer 200)."""
    result = []
    with httpx.Client(trust_env=False, timeout=10) as client:
        for i in range(warmup + n):
            start = time.perf_counter()
            response = client.get(url, headers=headers)
            elapsed = (time.perf_counter() - start) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"GET {url} answered {response.status_code}: "
                                   f"{response.text[:200]}")
            if i >= warmup:
                result.append(elapsed)
    return result
