"""Run a benchmark suite: every enabled component in pipeline order, then speed-ups and derived ratios.

``run_suite(load_suite("cpu-quick"))`` is what ``sammil-deploy benchmark --suite cpu-quick`` calls. Exports,
the synthetic slide and the outputs of the end-to-end runs go to a scratch folder (a temporary one unless
``work_dir`` is given); nothing is written to the working directory.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sammil_deploy.bench.bench_setup import BenchSetup, Progress
from sammil_deploy.bench.report import BenchmarkReport, BenchmarkResult, Ratio, ratio_of, with_speedups
from sammil_deploy.bench.suites import SuiteConfig
from sammil_deploy.config import to_dict
from sammil_deploy.environment import capture_environment
from sammil_deploy.errors import ConfigError
from sammil_deploy.runtime.devices import resolve_device

log = logging.getLogger(__name__)


def _runners(suite: SuiteConfig, ctx: BenchSetup) -> dict[str, Callable[[], list[BenchmarkResult]]]:
    from sammil_deploy.bench.components import bench_models
    from sammil_deploy.bench.end_to_end import bench_end_to_end
    from sammil_deploy.bench.extraction import bench_extraction
    from sammil_deploy.bench.maskgen import bench_mask_generation
    from sammil_deploy.bench.reading import bench_reading

    return {
        "sam_encoder": lambda: bench_models("sam_encoder", suite.sam_encoder, ctx),
        "mask_generation": lambda: bench_mask_generation(suite.mask_generation, ctx),
        "resnet50": lambda: bench_models("resnet50", suite.resnet50, ctx),
        "mil": lambda: bench_models("mil", suite.mil, ctx),
        "reading": lambda: bench_reading(suite.reading, ctx),
        "extraction": lambda: bench_extraction(suite.extraction, ctx),
        "end_to_end": lambda: bench_end_to_end(suite.end_to_end, ctx),
    }


def run_suite(
    suite: SuiteConfig,
    *,
    work_dir: Path | None = None,
    progress: Progress | None = None,
    on_component: Callable[[str, list[BenchmarkResult]], None] | None = None,
    machine: str | None = None,
) -> BenchmarkReport:
    """Run every enabled component of ``suite`` and return the report (nothing is written but scratch files).

    Args:
        suite: What to run (:func:`~sammil_deploy.bench.suites.load_suite`).
        work_dir: Scratch folder for exports, the synthetic slide and end-to-end outputs (kept); a temporary
            folder (removed) when None.
        progress: Called with a short message before each measurement.
        on_component: Called with each component's rows as it finishes.
        machine: The user's name for the machine (``"2-core CPU dev machine"``), stored with the environment.

    Raises:
        ConfigError: Bad suite (CUDA asked for without a GPU, missing slide).
    """
    import torch

    device = resolve_device(suite.device, option="suite device")
    if suite.slide and not Path(suite.slide).is_file():
        raise ConfigError(f"{suite.slide}: benchmark slide not found; fix 'slide' in the suite or leave it empty")
    start = time.perf_counter()
    load_before = _load_average()
    previous_threads = torch.get_num_threads()
    if suite.threads:
        torch.set_num_threads(suite.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="sammil-bench-") as tmp:
            folder = Path(work_dir) if work_dir is not None else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            results = _run_components(suite, device, folder, progress, on_component)
    finally:
        torch.set_num_threads(previous_threads)
    results = with_speedups(results)
    env = capture_environment()
    env["load_average_1min"] = {"before": load_before, "after": _load_average()}
    if machine:
        env["machine"] = machine
    config = {**to_dict(suite), "resolved_device": device}
    return BenchmarkReport(suite.name, env, config, results, derive_ratios(results), time.perf_counter() - start)


def _run_components(
    suite: SuiteConfig,
    device: str,
    folder: Path,
    progress: Progress | None,
    on_component: Callable[[str, list[BenchmarkResult]], None] | None,
) -> list[BenchmarkResult]:
    from sammil_deploy.bench.reading import cached_pipeline_slide, synthetic_benchmark_slide

    say = progress or (lambda message: log.info("%s", message))
    if suite.slide:
        slide = Path(suite.slide)
    else:
        say(f"writing a {suite.synthetic_size_px} px synthetic slide")
        slide = synthetic_benchmark_slide(folder / "slides", suite.synthetic_size_px, suite.seed)
    pipeline_slide = None
    if suite.pipeline_slide_px:
        say(f"real-sized {suite.pipeline_slide_px} px synthetic slide (written once, then cached)")
        pipeline_slide = cached_pipeline_slide(suite.pipeline_slide_px, suite.seed)
    ctx = BenchSetup(
        device=device,
        threads=suite.threads,
        timing=suite.timing,
        work_dir=folder,
        slide=slide,
        seed=suite.seed,
        progress=say,
        pipeline_slide=pipeline_slide,
    )
    runners = _runners(suite, ctx)
    results: list[BenchmarkResult] = []
    for component in suite.enabled_components():
        rows = runners[component]()
        results += rows
        if on_component is not None:
            on_component(component, with_speedups(rows))
    return results


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _ok(rows: Sequence[BenchmarkResult], component: str) -> list[BenchmarkResult]:
    return [r for r in rows if r.component == component and r.status == "ok"]


def _fastest(rows: Sequence[BenchmarkResult]) -> BenchmarkResult | None:
    return max(rows, key=lambda r: r.items_per_s or 0.0, default=None)


# End-to-end backends and the ResNet50 benchmark variant that runs the same encoder.
_MODEL_ONLY_BACKEND = {"torch": "torch", "ort-cpu": "ort-cpu", "ort-cuda": "ort-cuda", "tensorrt": "tensorrt"}


def derive_ratios(results: Sequence[BenchmarkResult]) -> list[Ratio]:
    """Throughput ratios across components measured in the run.

    - our reader + null model vs the OpenSlide per-patch floor with the same workers;
    - extraction and end to end vs the OpenSlide floor (its fastest row: regions/s are patches/s);
    - extraction and end to end vs model only (ResNet50-trunc on the same backend and precision, at the largest
      measured batch not above the pipeline's batch size);
    - our fastest extraction vs the CLAM-style reference.
    """
    ratios: list[Ratio | None] = []
    reading = _ok(results, "reading")
    openslide = [r for r in reading if r.backend.startswith("openslide")]
    floor = _fastest(openslide)
    for row in (r for r in reading if r.backend.startswith("ours")):
        same = next((r for r in openslide if r.notes.get("workers") == row.notes.get("workers")), None)
        ratios.append(ratio_of(f"{row.backend} / OpenSlide floor, same workers", row, same))
    extraction = _ok(results, "extraction")
    ours = [r for r in extraction if r.backend.startswith("ours")]
    reference = next((r for r in extraction if r.reference), None)
    best_ours = _fastest(ours)
    ratios.append(ratio_of("our extraction / CLAM-style extraction (same patches, same model)", best_ours, reference))
    for row in ours:
        ratios.append(ratio_of(f"extraction ({row.backend}) / OpenSlide floor", row, floor))
        backend = "ort-cpu" if "onnxruntime" in row.backend else "torch"
        model = _model_only(results, backend, row.precision, _batch(row))
        ratios.append(ratio_of(f"extraction ({row.backend}) / model only", row, model))
    for row in _ok(results, "end_to_end"):
        ratios.append(ratio_of(f"end to end ({row.backend} {row.precision}) / OpenSlide floor", row, floor))
        model = _model_only(results, _MODEL_ONLY_BACKEND.get(row.backend, row.backend), row.precision, _batch(row))
        ratios.append(ratio_of(f"end to end ({row.backend} {row.precision}) / model only", row, model))
    return [r for r in ratios if r is not None]


def _batch(row: BenchmarkResult) -> int | None:
    """The encoder batch size an extraction/end-to-end row ran with (its notes)."""
    value = row.notes.get("batch_size")
    return int(value) if value is not None else None


def _model_only(
    results: Sequence[BenchmarkResult], backend: str, precision: str, batch: int | None
) -> BenchmarkResult | None:
    """The ResNet50 row of ``backend``/``precision`` at the largest batch not above ``batch``."""
    rows = [r for r in _ok(results, "resnet50") if r.backend == backend and r.precision == precision]
    if not rows:
        return None
    fitting = [r for r in rows if batch is None or r.items_per_call <= batch]
    return max(fitting or rows, key=lambda r: r.items_per_call)
