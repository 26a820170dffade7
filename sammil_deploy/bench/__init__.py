"""Benchmarks: honest timing, environment capture, per-component runs on every backend, reports.

``run_suite(load_suite("cpu-quick"))`` is what ``sammil-deploy benchmark`` calls. Importing this package is
cheap; torch, onnxruntime and TensorRT are imported when a benchmark runs.
"""

from sammil_deploy.bench.report import BenchmarkReport, BenchmarkResult, read_json, write_json, write_markdown
from sammil_deploy.bench.run import run_suite
from sammil_deploy.bench.suites import SuiteConfig, load_suite
from sammil_deploy.bench.timing import TimingPolicy, TimingStats, time_callable, time_interleaved

__all__ = [
    "BenchmarkReport",
    "BenchmarkResult",
    "SuiteConfig",
    "TimingPolicy",
    "TimingStats",
    "load_suite",
    "read_json",
    "run_suite",
    "time_callable",
    "time_interleaved",
    "write_json",
    "write_markdown",
]
