"""Benchmark library: timing statistics, environment, report round trips, suites, and small real runs.

The runs are real (real torch and onnxruntime sessions, real slides and DataLoaders) but tiny: the MIL head at
16/64 instances, 8 regions read, 4 patches extracted. Timing assertions use wide tolerances (shared CPUs).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from sammil_deploy.bench.bench_setup import BenchSetup
from sammil_deploy.bench.report import (
    BenchmarkReport,
    BenchmarkResult,
    read_json,
    render_table,
    unavailable,
    with_speedups,
    write_json,
    write_markdown,
)
from sammil_deploy.bench.suites import load_suite, restrict
from sammil_deploy.bench.timing import TimingPolicy, TimingStats, items_per_s, time_callable, time_interleaved
from sammil_deploy.bench.variants import Variant
from sammil_deploy.environment import REQUIRED_KEYS, capture_environment, hardware_label
from sammil_deploy.errors import ConfigError

QUICK = TimingPolicy(warmup=1, iters=3, min_seconds=0.0, max_seconds=5.0, min_iters=3)


# --- timing -------------------------------------------------------------------------------------------------------


def test_stats_of_known_samples():
    stats = TimingStats.from_samples([0.001, 0.002, 0.003, 0.004])
    assert stats.n == 4
    assert stats.median_ms == pytest.approx(2.5)
    assert stats.mean_ms == pytest.approx(2.5)
    assert stats.min_ms == pytest.approx(1.0)
    assert stats.max_ms == pytest.approx(4.0)
    assert stats.std_ms == pytest.approx(np.sqrt(5 / 3))  # sample std of 1, 2, 3, 4 ms
    assert stats.p90_ms == pytest.approx(3.7)  # linear interpolation: 3 + 0.7 * (4 - 3)
    assert stats.total_s == pytest.approx(0.010)
    assert items_per_s(8, stats) == pytest.approx(8 / 0.0025)
    with pytest.raises(ValueError, match="no timing samples"):
        TimingStats.from_samples([])


def test_time_callable_measures_a_sleep():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.01)

    stats = time_callable(work, TimingPolicy(warmup=2, iters=8, min_seconds=0.0, max_seconds=10.0))
    assert stats.n == 8
    assert len(calls) == 10
    assert 10.0 <= stats.median_ms < 80.0  # sleep() never returns early; a loaded machine adds delay
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms


def test_interleaved_timing_keeps_the_ratio_and_the_policy_limits():
    stats = time_interleaved(
        {"short": lambda: time.sleep(0.005), "long": lambda: time.sleep(0.02)},
        TimingPolicy(warmup=0, iters=6, min_seconds=0.0, max_seconds=10.0),
    )
    assert stats["short"].n == stats["long"].n == 6
    assert 1.5 < stats["long"].median_ms / stats["short"].median_ms < 5.0
    capped = time_callable(
        lambda: time.sleep(0.05), TimingPolicy(warmup=0, iters=100, min_seconds=0.0, max_seconds=0.2, min_iters=2)
    )
    assert 2 <= capped.n <= 6  # stopped by max_seconds, after at least min_iters calls


def test_timing_policy_rejects_bad_limits():
    with pytest.raises(ConfigError, match="min_iters"):
        TimingPolicy(iters=2, min_iters=3)
    with pytest.raises(ConfigError, match="min_seconds"):
        TimingPolicy(min_seconds=5.0, max_seconds=1.0)


# --- environment --------------------------------------------------------------------------------------------------


def test_environment_has_the_required_keys():
    env = capture_environment()
    missing = [k for k in REQUIRED_KEYS if k not in env]
    assert not missing
    assert env["cpu_logical_cores"] == os.cpu_count()
    assert env["torch"] == torch.__version__
    assert env["cuda_available"] == torch.cuda.is_available()
    json.dumps(env)  # JSON-able
    if not torch.cuda.is_available():
        assert env["gpus"] == []
        assert "no GPU" in hardware_label(env)


# --- report -------------------------------------------------------------------------------------------------------


def _row(backend: str, precision: str, seconds: list[float], *, reference: bool = False, items: int = 8):
    return BenchmarkResult(
        "resnet50", backend, precision, "batch 8", items, "patches",
        timing=TimingStats.from_samples(seconds), reference=reference,
    )  # fmt: skip


def _report() -> BenchmarkReport:
    rows = [
        _row("torch", "fp32", [0.4, 0.4, 0.4], reference=True),
        _row("ort-cpu", "fp32", [0.1, 0.1, 0.1]),
        unavailable("resnet50", "tensorrt", "fp16", "batch 8", "patches", "no CUDA GPU is visible"),
    ]
    return BenchmarkReport("unit", capture_environment(), {"suite": "unit"}, with_speedups(rows), [], 1.5)


def test_speedups_are_throughput_ratios_within_a_group():
    report = _report()
    ref, ort, trt = report.results
    assert ref.speedup == pytest.approx(1.0)
    assert ort.speedup == pytest.approx(4.0)
    assert trt.speedup is None
    assert trt.items_per_s is None
    assert ort.items_per_s == pytest.approx(80.0)
    with pytest.raises(ConfigError, match="two reference rows"):
        with_speedups([_row("torch", "fp32", [0.1], reference=True), _row("torch", "bf16", [0.1], reference=True)])
    with pytest.raises(ConfigError, match="needs timing"):
        BenchmarkResult("mil", "torch", "fp32", "1 instance", 1, "instances")
    with pytest.raises(ConfigError, match="needs a reason"):
        BenchmarkResult("mil", "torch", "fp32", "1 instance", 1, "instances", status="failed")


def test_report_json_markdown_and_table_round_trip(tmp_path):
    report = _report()
    path = write_json(report, tmp_path / "sub" / "results.json")
    assert not list(tmp_path.rglob("*.partial"))
    back = read_json(path)
    assert back.to_dict() == report.to_dict()
    assert back.results[1].speedup == pytest.approx(4.0)
    md = write_markdown(report, tmp_path / "results.md").read_text()
    assert "| component | backend |" in md
    assert "4.00x" in md
    assert "no CUDA GPU is visible" in md
    assert report.hardware in md
    console = Console(record=True, width=200)
    console.print(render_table(report))
    text = console.export_text()
    assert "ort-cpu" in text
    assert "unavailable" in text
    assert "1.00x (ref)" in text
    (tmp_path / "bad.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ConfigError, match="schema_version"):
        read_json(tmp_path / "bad.json")


# --- suites -------------------------------------------------------------------------------------------------------


def test_committed_suites_load():
    quick, full = load_suite("cpu-quick"), load_suite("gpu-full")
    assert quick.device == "cpu"
    assert full.device == "cuda"
    assert set(quick.enabled_components()) == set(full.enabled_components())
    assert "vit_h" in full.sam_encoder.models
    stand_in, sam_decoder = load_suite("sammil-maskgen-cpu"), load_suite("sammil-maskgen-samdecoder-cpu")
    assert stand_in.mask_generation.mask_decoder == "stand_in"
    assert sam_decoder.mask_generation.mask_decoder == "sam"
    vit_b = load_suite("sammil-maskgen-vitb-cpu").mask_generation
    assert (vit_b.model, vit_b.mask_decoder, vit_b.reference) == ("vit_b", "sam", False)
    for cfg in (stand_in.mask_generation, sam_decoder.mask_generation, vit_b):  # SAM-MIL's generator settings
        assert (cfg.points_per_side, cfg.crop_n_layers, cfg.long_side_px) == (32, 1, 1024)


def test_mask_generation_decoder_choice():
    from segment_anything.modeling import MaskDecoder

    from sammil_deploy.bench.maskgen import DiscMaskDecoder, benchmark_sam
    from sammil_deploy.bench.suites import MaskGenerationBench

    assert MaskGenerationBench(model="vit_b").mask_decoder == "sam"
    with pytest.raises(ConfigError, match="stand_in.*with model 'tiny'"):
        MaskGenerationBench(model="vit_b", mask_decoder="stand_in")
    with pytest.raises(ConfigError, match="mask_decoder"):
        MaskGenerationBench(mask_decoder="disc")
    assert isinstance(benchmark_sam("tiny", 0, "stand_in")[0].mask_decoder, DiscMaskDecoder)
    sam, spec_sam = benchmark_sam("tiny", 0, "sam")
    assert isinstance(sam.mask_decoder, MaskDecoder)
    assert sam is spec_sam  # the calibrated SAM is exported as it runs


def test_suite_rejects_unknown_keys_and_variants(tmp_path):
    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text("[resnet50]\nbatch_sizes = [1, 8]\n")
    with pytest.raises(ConfigError, match="batch_sizes"):
        load_suite(bad_key)
    bad_variant = tmp_path / "bad_variant.toml"
    bad_variant.write_text('[mil]\nvariants = ["torch:fp32", "onnx:fp32"]\n')
    with pytest.raises(ConfigError, match="unknown backend 'onnx'"):
        load_suite(bad_variant)
    with pytest.raises(ConfigError, match="cannot run 'fp16'"):
        Variant.parse("ort-cpu:fp16")
    with pytest.raises(ConfigError, match="unknown suite"):
        load_suite("no-such-suite")
    with pytest.raises(ConfigError, match="unknown component"):
        restrict(load_suite("cpu-quick"), ("resnet50", "sam"))
    assert restrict(load_suite("cpu-quick"), ("end-to-end",)).enabled_components() == ("end_to_end",)


# --- small real runs ----------------------------------------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path, synthetic_slide) -> BenchSetup:
    return BenchSetup(device="cpu", threads=2, timing=QUICK, work_dir=tmp_path / "work", slide=synthetic_slide)


def test_mil_head_torch_vs_onnxruntime(ctx):
    from sammil_deploy.bench.components import bench_models
    from sammil_deploy.bench.suites import ModelBench

    cfg = ModelBench(variants=("ort-cpu:fp32", "tensorrt:fp16"), sizes=(16, 64))
    rows = with_speedups(bench_models("mil", cfg, ctx))
    by = {(r.backend, r.size): r for r in rows}
    assert set(by) == {(b, f"{n} instances") for b in ("torch", "ort-cpu", "tensorrt") for n in (16, 64)}
    for n in (16, 64):
        ref, ort = by[("torch", f"{n} instances")], by[("ort-cpu", f"{n} instances")]
        assert ref.status == ort.status == "ok"
        assert ref.reference
        assert ref.timing.n >= 3
        assert ref.speedup == pytest.approx(1.0)
        assert ort.speedup == pytest.approx(ort.items_per_s / ref.items_per_s)
        assert ort.speedup > 0
        assert ort.items_per_call == n
        assert ort.notes["parity_vs_torch_fp32"]["max_abs_diff"] < 1e-4
        if not torch.cuda.is_available():
            assert by[("tensorrt", f"{n} instances")].status == "unavailable"
    assert (ctx.work_dir / "exports" / "mil_head" / "mil_head.fp32.onnx").is_file()  # exported once, reused


def test_reading_floor_rows(ctx):
    from sammil_deploy.bench.reading import bench_reading
    from sammil_deploy.bench.suites import ReadingBench

    rows = bench_reading(ReadingBench(workers=(0, 1), regions=8, batch_size=4), ctx)
    assert [r.notes["workers"] for r in rows] == [0, 1, 0, 1]
    assert [r.reference for r in rows] == [True, False, False, False]
    assert [r.backend.split(" ")[0] for r in rows] == ["openslide", "openslide", "ours", "ours"]
    assert "tiled-jpeg" in rows[2].backend  # the synthetic slide's JPEG tiles go through the tile reader
    assert all(r.status == "ok" and r.items_per_call == 8 and r.unit == "regions" for r in rows)


def test_clam_style_baseline_and_ours_give_the_same_features(ctx):
    from sammil_deploy.bench.extraction import bench_extraction
    from sammil_deploy.bench.suites import ExtractionBench

    cfg = ExtractionBench(
        patches=4, batch_size=4, workers=(0,), clam_workers=(-1,),
        timing=TimingPolicy(warmup=0, iters=1, min_seconds=0.0, max_seconds=5.0, min_iters=1),
    )  # fmt: skip
    clam, ours_ort, ours_torch = bench_extraction(cfg, ctx)
    assert clam.reference
    assert clam.backend.startswith("clam-style, 0 workers")
    assert ours_ort.backend == "ours (onnxruntime), 0 workers"  # what `extract --backend auto` runs on the CPU
    assert ours_torch.backend == "ours (torch), 0 workers"
    for ours in (ours_ort, ours_torch):
        assert clam.status == ours.status == "ok"
        assert ours.speedup is None
        agreement = ours.notes["features_vs_reference_inside_slide"]
        assert agreement["cosine"] > 0.9999
        assert agreement["max_abs_diff"] < 1e-3


def test_cli_benchmark_writes_json_and_markdown(tmp_path):
    from sammil_deploy.cli import app

    suite = tmp_path / "tiny.toml"
    suite.write_text(
        'name = "tiny"\ndevice = "cpu"\nthreads = 2\n'
        "[timing]\nwarmup = 1\niters = 3\nmin_seconds = 0.0\nmax_seconds = 3.0\n"
        '[mil]\nvariants = ["torch:fp32", "ort-cpu:fp32"]\nsizes = [32]\n'
    )
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    result = CliRunner().invoke(
        app, ["benchmark", "--suite", str(suite), "--out", str(out), "--markdown", str(md), "--work-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = read_json(out)
    assert report.suite == "tiny"
    assert [r.backend for r in report.results] == ["torch", "ort-cpu"]
    assert all(r.status == "ok" and r.speedup is not None for r in report.results)
    assert "ort-cpu" in result.stdout
    assert "speed-up" in result.stdout
    assert "# Benchmark `tiny`" in md.read_text()
    bad = CliRunner().invoke(app, ["benchmark", "--suite", str(suite), "--only", "nonsense"])
    assert bad.exit_code != 0


@pytest.mark.slow
def test_mask_generation_and_end_to_end_rows(tmp_path):
    from sammil_deploy.bench.end_to_end import bench_end_to_end
    from sammil_deploy.bench.maskgen import bench_mask_generation
    from sammil_deploy.bench.suites import EndToEndBench, MaskGenerationBench
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    slide = tmp_path / "small.svs"  # ~8 patches of 512 px: a whole slide per timed call stays cheap
    write_synthetic_slide(slide, SyntheticSlideSpec(width_px=2048, height_px=1536, mpp=0.5, seed=11, n_lumens=1))
    once = TimingPolicy(warmup=0, iters=1, min_seconds=0.0, max_seconds=5.0, min_iters=1)
    ctx = BenchSetup(device="cpu", threads=2, timing=once, work_dir=tmp_path / "work", slide=slide)

    masks = with_speedups(
        bench_mask_generation(
            MaskGenerationBench(variants=("ort-cpu:fp32",), long_side_px=256, points_per_side=4, crop_n_layers=0), ctx
        )
    )
    assert [(r.backend, r.status) for r in masks] == [
        ("torch (upstream generator)", "ok"),
        ("torch (fast generator)", "ok"),
        ("ort-cpu (fast generator)", "ok"),
    ]
    assert masks[0].reference
    assert len({r.notes["masks"] for r in masks}) == 1  # same masks from every generator and backend
    assert masks[0].notes["masks"] >= 2  # the many-mask stand-in: more than one blob to match
    assert all(r.notes["matched_iou_min"] >= 0.99 for r in masks[1:])  # every mask has a partner, both ways
    for row in masks[1:]:  # the fast generators' sub-stages, medians of the timed calls
        stages = row.notes["stage_median_s"]
        assert set(stages) == {"encoder_s", "decoder_s", "postprocess_s"}
        assert 0 < stages["decoder_s"] < row.timing.median_ms / 1000
    assert "stage_median_s" not in masks[0].notes  # the upstream generator has no sub-stage profile
    e2e = with_speedups(bench_end_to_end(EndToEndBench(variants=("ort-cpu:fp32",), workers=1, batch_size=8), ctx))
    torch_row, ort_row = e2e
    assert torch_row.reference
    assert ort_row.status == "ok"
    assert ort_row.items_per_call == torch_row.items_per_call > 0  # the slide's patches
    probs = torch_row.notes["probabilities"], ort_row.notes["probabilities"]
    assert all(abs(probs[0][c] - probs[1][c]) < 1e-3 for c in probs[0])
