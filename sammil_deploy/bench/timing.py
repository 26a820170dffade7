"""Honest timing: warm-up, synchronisation, many repeats, robust statistics, CUDA events on the GPU.

``time_callable`` times one callable; ``time_interleaved`` times several in alternating rounds, so that a
change of machine load (other processes, thermal limits, a background build) hits every variant alike and
their ratio stays meaningful — that is how a benchmark compares backends within one run.

On a CUDA device each sample is the time between two CUDA events recorded around the call on the current
stream, read after synchronising the end event; a call that returns before its GPU work finishes is still
timed to the end of that work. On the CPU each sample is ``time.perf_counter`` around the call.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sammil_deploy.errors import ConfigError

__all__ = ["TimingPolicy", "TimingStats", "Timer", "items_per_s", "make_timer", "time_callable", "time_interleaved"]


@dataclass(frozen=True, slots=True)
class TimingStats:
    """Summary of per-call latencies (all in milliseconds).

    Attributes:
        n: Number of timed calls.
        median_ms: Median latency.
        p90_ms: 90th percentile (linear interpolation).
        p99_ms: 99th percentile (with few samples this is close to the maximum).
        mean_ms: Mean latency.
        std_ms: Sample standard deviation (0 for one sample).
        min_ms: Fastest call.
        max_ms: Slowest call.
        total_s: Sum of the timed calls in seconds (warm-up excluded).
    """

    n: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    total_s: float

    @classmethod
    def from_samples(cls, samples_s: Sequence[float]) -> TimingStats:
        """Statistics of per-call durations given in seconds.

        Raises:
            ValueError: If there are no samples or a sample is negative or not finite.
        """
        x = np.asarray(samples_s, dtype=np.float64)
        if x.size == 0:
            raise ValueError("no timing samples")
        if not np.all(np.isfinite(x)) or np.any(x < 0):
            raise ValueError("timing samples must be finite and >= 0 seconds")
        ms = x * 1e3
        return cls(
            n=int(x.size),
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(ms.mean()),
            std_ms=float(ms.std(ddof=1)) if x.size > 1 else 0.0,
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            total_s=float(x.sum()),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (rounded to microseconds) for JSON."""
        values = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in values}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimingStats:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def items_per_s(items_per_call: float, stats: TimingStats) -> float:
    """Throughput at the median latency: ``items_per_call / median seconds`` (``inf`` for a 0 ms median)."""
    seconds = stats.median_ms / 1e3
    return math.inf if seconds == 0 else items_per_call / seconds


@dataclass(frozen=True, slots=True)
class TimingPolicy:
    """How many calls to time.

    At least ``warmup`` untimed calls, then timed calls until both ``iters`` calls and ``min_seconds`` of timed
    work are reached, stopping early (after at least ``min_iters`` calls) once ``max_seconds`` of timed work
    are spent, so a slow variant on a slow machine still finishes.

    Attributes:
        warmup: Untimed calls first (allocators, autotuning, lazy initialisation, caches).
        iters: Target number of timed calls.
        min_seconds: Keep timing until this much timed work is done (more samples for fast calls).
        max_seconds: Stop once this much timed work is done (if ``min_iters`` are reached).
        min_iters: Fewest timed calls, whatever ``max_seconds`` says.
        max_iters: Most timed calls, whatever ``min_seconds`` says (bounds near-zero-time calls).
    """

    warmup: int = 10
    iters: int = 100
    min_seconds: float = 2.0
    max_seconds: float = 60.0
    min_iters: int = 3
    max_iters: int = 100_000

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ConfigError(f"timing.warmup must be >= 0, got {self.warmup}")
        if self.iters < 1 or self.min_iters < 1:
            raise ConfigError(f"timing.iters and timing.min_iters must be >= 1, got {self.iters}, {self.min_iters}")
        if not self.min_iters <= self.iters <= self.max_iters:
            raise ConfigError(
                f"timing needs min_iters <= iters <= max_iters, got {self.min_iters}, {self.iters}, {self.max_iters}"
            )
        if self.min_seconds < 0 or self.max_seconds <= 0 or self.min_seconds > self.max_seconds:
            raise ConfigError(
                f"timing needs 0 <= min_seconds <= max_seconds and max_seconds > 0, got "
                f"{self.min_seconds}, {self.max_seconds}"
            )

    def done(self, n: int, elapsed_s: float) -> bool:
        """Whether timing may stop after ``n`` timed calls taking ``elapsed_s`` in total."""
        if n >= self.max_iters or (n >= self.min_iters and elapsed_s >= self.max_seconds):
            return True
        return n >= self.iters and elapsed_s >= self.min_seconds


class Timer:
    """Measures one call: ``perf_counter`` around it on the CPU, CUDA events around it on a CUDA device."""

    kind = "perf_counter"

    def __call__(self, fn: Callable[[], object]) -> float:
        """Seconds one call of ``fn`` takes."""
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def sync(self) -> None:
        """Wait for queued device work (nothing to wait for on the CPU)."""


class CudaEventTimer(Timer):
    """Elapsed time between CUDA events recorded before and after the call on the current stream."""

    kind = "cuda_events"

    def __init__(self, device: Any) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)

    def __call__(self, fn: Callable[[], object]) -> float:
        """Seconds from the start event to the end event (the end event is synchronised)."""
        torch = self._torch
        with torch.cuda.device(self.device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

    def sync(self) -> None:
        """``torch.cuda.synchronize`` on the timer's device."""
        self._torch.cuda.synchronize(self.device)


def make_timer(device: str | None) -> Timer:
    """CUDA-event timer for a ``cuda``/``cuda:N`` device, wall-clock timer otherwise."""
    if device is not None and str(device).startswith("cuda"):
        return CudaEventTimer(device)
    return Timer()


def time_callable(
    fn: Callable[[], object], policy: TimingPolicy | None = None, *, timer: Timer | None = None
) -> TimingStats:
    """Warm up, then time ``fn`` per :class:`TimingPolicy` (defaults: 10 warm-up, >= 100 calls, >= 2 s).

    Args:
        fn: The work; it must return only once its result is usable (or be timed with a CUDA timer).
        policy: Warm-up, iteration and time limits.
        timer: Per-call timer (:func:`make_timer`); wall clock by default.

    Returns:
        Statistics of the timed calls.
    """
    return time_interleaved({"fn": fn}, policy, timer=timer)["fn"]


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], policy: TimingPolicy | None = None, *, timer: Timer | None = None
) -> dict[str, TimingStats]:
    """Time several callables in alternating rounds (one call of each per round), after warming each up.

    Every variant gets the same number of timed calls; the policy's time limits apply to the slowest variant's
    accumulated time (so a slow variant bounds the run and fast variants get as many samples as it does).

    Returns:
        ``{name: stats}`` in the order of ``fns``.
    """
    policy = policy or TimingPolicy()
    timer = timer or Timer()
    if not fns:
        return {}
    for fn in fns.values():
        for _ in range(policy.warmup):
            fn()
    timer.sync()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    while True:
        for name, fn in fns.items():
            samples[name].append(timer(fn))
        n = len(next(iter(samples.values())))
        if policy.done(n, max(sum(s) for s in samples.values())):
            break
    return {name: TimingStats.from_samples(s) for name, s in samples.items()}
