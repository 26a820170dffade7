"""End to end per slide: ``pipeline.infer.run_slide`` (tissue → patches → segments → features → MIL → outputs).

The run's random ResNet50-trunc weights and random MIL checkpoint are exported (the ONNX files the model
components already made are reused) and assembled into an inference bundle with ``make_bundle``, exactly as a
deployment would; each backend's networks are loaded once (``open_slide_backends``) and every timed call is one whole
slide, interleaved across backends. Items are the slide's patches, so patches/s compares with the reading floor
and with the encoder alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sammil_deploy.bench.backends as bk
from sammil_deploy.bench.bench_setup import BenchSetup
from sammil_deploy.bench.components import RUN_ERRORS, mil_network, resnet50_network
from sammil_deploy.bench.reading import TISSUE_PRESET
from sammil_deploy.bench.report import BenchmarkResult, failed, unavailable
from sammil_deploy.bench.suites import EndToEndBench
from sammil_deploy.bench.timing import time_interleaved
from sammil_deploy.bench.variants import BENCH_BACKENDS, Variant, reference_first

if TYPE_CHECKING:
    from sammil_deploy.bundle import Bundle

COMPONENT = "end_to_end"
MAX_INSTANCES = 200_000  # TensorRT profile maximum of the MIL head's bag size


def build_bundle(ctx: BenchSetup, variants: tuple[Variant, ...], batch_size: int) -> Bundle:
    """A bundle of the run's random encoder and MIL head with the exports ``variants`` need (fallback segmenter)."""
    from sammil_deploy.bundle import make_bundle
    from sammil_deploy.pipeline.extract import load_extract_config

    export_dir = ctx.work_dir / "end_to_end" / "export"
    shutil.rmtree(export_dir, ignore_errors=True)
    export_dir.mkdir(parents=True)
    networks = {"resnet50": resnet50_network(ctx), "mil": mil_network(ctx)}
    sizes = {"resnet50": (1, batch_size), "mil": (1, MAX_INSTANCES)}
    needed = {(v.backend, v.precision) for v in variants if v.backend != "torch"}
    for backend, precision in sorted(needed):
        for part, net in networks.items():
            onnx = ctx.exports.onnx_path(net.name, net.module, net.spec, net.example, precision)
            _link(onnx, export_dir)
            if backend == "tensorrt":
                plan = ctx.exports.plan_path(net.name, onnx, precision, bk.profile_for(net.spec, sizes[part]))
                _link(plan, export_dir)
                _link(plan.with_name(plan.name + ".json"), export_dir)
    preprocess = load_extract_config(
        preset=TISSUE_PRESET, overrides={"features.weights": ctx.encoder_weights(), "segment.segmenter": "fallback"}
    )
    return make_bundle(
        ctx.work_dir / "end_to_end" / "bundle",
        ctx.mil_checkpoint(),
        export_dir if needed else None,
        preprocess,
        overwrite=True,
    )


def _link(src: Path, folder: Path) -> None:
    """Hard-link (or copy) ``src`` and its external-data file into ``folder``."""
    for path in (src, src.with_name(src.name + ".data")):
        if path.is_file():
            dst = folder / path.name
            try:
                dst.hardlink_to(path)
            except OSError:
                shutil.copy2(path, dst)


def _not_an_infer_backend(variant: Variant) -> str | None:
    """Why ``infer`` cannot run ``variant`` (it runs the runtime kinds as they are: no compile, no ORT+TensorRT)."""
    runtime = variant.runtime
    if runtime.compile or runtime.ort_provider == "tensorrt":
        usable = [name for name, b in BENCH_BACKENDS.items() if not b.compile and b.ort_provider != "tensorrt"]
        return f"infer has no {variant.backend} backend (use {', '.join(usable)})"
    return None


def _infer_device(variant: Variant, suite_device: str) -> str:
    """``ort-cpu`` is onnxruntime on the CPU whatever the suite's device; the others run on the suite's device."""
    return "cpu" if variant.runtime.ort_provider == "cpu" else suite_device


def bench_end_to_end(cfg: EndToEndBench, ctx: BenchSetup) -> list[BenchmarkResult]:
    """Time ``run_slide`` on the benchmark slide per backend variant; torch eager FP32 is the reference.

    Each variant's networks and reader processes are started once, untimed, as ``infer`` starts them once per
    run; every timed call is one whole slide.
    """
    import contextlib

    if cfg.torch_reference:
        variants = reference_first(cfg.variants, "end_to_end.variants")
    else:
        variants = tuple(Variant.parse(v, where="end_to_end.variants") for v in cfg.variants)
    slide = ctx.pipeline_slide
    size = f"{slide.name}, batch {cfg.batch_size}, {cfg.workers} workers"
    rows, runnable = _runnable(variants, ctx, size)
    ctx.progress(f"{COMPONENT}: exporting and bundling")
    bundle = build_bundle(ctx, tuple(runnable), cfg.batch_size)
    calls: dict[str, Any] = {}
    firsts: dict[str, tuple[Variant, Any]] = {}
    last: dict[str, Any] = {}  # the last timed run's result per variant
    with contextlib.ExitStack() as stack:
        for variant in runnable:
            try:
                run = _load_variant(variant, cfg, ctx, bundle, stack)
                first = run() if cfg.warm_up_run else None
            except RUN_ERRORS as err:
                reason = f"{type(err).__name__}: {err}"
                rows.append(failed(COMPONENT, variant.backend, variant.precision, size, "patches", reason))
                continue
            key = str(variant)
            calls[key] = lambda run=run, k=key: last.__setitem__(k, run())
            firsts[key] = (variant, first)
        ctx.progress(f"{COMPONENT}: timing {len(calls)} backends on {slide.name}")
        stats = time_interleaved(calls, cfg.timing or ctx.timing, timer=ctx.timer)
    for key, (variant, first) in firsts.items():
        rows.append(_row(variant, cfg, ctx, size, last[key], stats[key], warmed=first is not None))
    return sorted(rows, key=lambda r: [str(v) for v in variants].index(f"{r.backend}:{r.precision}"))


def _runnable(variants: tuple[Variant, ...], ctx: BenchSetup, size: str) -> tuple[list[BenchmarkResult], list[Variant]]:
    """``(unavailable rows, runnable variants)`` on this machine."""
    rows, runnable = [], []
    for variant in variants:
        reason = bk.unavailable_reason(variant, ctx.device)
        if reason is None:
            reason = _not_an_infer_backend(variant)
        if reason is not None:
            rows.append(unavailable(COMPONENT, variant.backend, variant.precision, size, "patches", reason))
        else:
            runnable.append(variant)
    return rows, runnable


def _load_variant(variant: Variant, cfg: EndToEndBench, ctx: BenchSetup, bundle: Bundle, stack: Any) -> Any:
    """Load the variant's networks and start its reader processes (closed by ``stack``); returns one-slide run."""
    from sammil_deploy.patching.reader_pool import ReaderPool
    from sammil_deploy.pipeline.backends import open_slide_backends
    from sammil_deploy.pipeline.infer import InferConfig, run_slide

    infer_cfg = InferConfig(
        backend=variant.runtime.kind, device=_infer_device(variant, ctx.device), precision=variant.precision,
        batch_size=cfg.batch_size, num_workers=cfg.workers, intra_op_threads=ctx.threads,
    )  # fmt: skip
    out_dir = ctx.work_dir / "end_to_end" / "out" / str(variant).replace(":", "_")
    backends = stack.enter_context(
        open_slide_backends(
            bundle, infer_cfg.backend, device=infer_cfg.device, precision=variant.precision,
            intra_op_threads=ctx.threads,
        )
    )  # fmt: skip
    readers = stack.enter_context(ReaderPool(cfg.workers)) if cfg.workers > 0 else None
    slide = ctx.pipeline_slide
    return lambda: run_slide(slide, bundle, infer_cfg, out_dir, backends=backends, readers=readers)


def _row(
    variant: Variant, cfg: EndToEndBench, ctx: BenchSetup, size: str, timed: Any, timing: Any, *, warmed: bool
) -> BenchmarkResult:
    """The result row of one variant, with the last timed run's per-stage seconds and shares."""
    stages = timed.stage_seconds
    total = sum(stages.values())
    return BenchmarkResult(
        COMPONENT,
        variant.backend,
        variant.precision,
        size,
        timed.n_patches,
        "patches",
        timing=timing,
        device=ctx.device,
        reference=variant.is_torch_eager_fp32,
        notes={
            "batch_size": cfg.batch_size,
            "workers": cfg.workers,
            "stage_seconds_last_run": {k: round(v, 3) for k, v in stages.items()},
            "stage_shares_last_run": {k: round(v / total, 4) for k, v in stages.items()} if total else {},
            "untimed_warm_up_run": warmed,
            "probabilities": timed.probabilities,
            "segmenter": "fallback",
            "weights": "random (speed only)",
            "timed_call": "run_slide: whole slide, networks and reader processes started once, outputs written",
        },
    )
