"""The one-command demo: the whole story on a synthetic cohort, on the CPU, in minutes.

Stages (each reuses its finished output when the demo is run again on the same folder):

1. ``data``: a synthetic cohort (half the slides with a tumour focus) and ``labels.csv``; one slide per class is
   held out from training.
2. ``weights``: a seeded **random** ResNet50-trunc (no weights can be downloaded here): the features carry colour
   and texture statistics only, so the numbers show the machinery working, not pathology accuracy.
3. ``extract``: tissue, 512 px patches, spatial context (the weight-free fallback segmenter, or with ``sam`` a
   tiny SAM with random weights: see ``demo_sam``), features, groups.
4. ``train``: SAM-MIL and AB-MIL with the demo recipe (``training/demo.toml``), cross-validated.
5. ``export``: ResNet50-trunc and the SAM-MIL head (with ``sam``: the SAM encoder and point decoder too) to ONNX,
   each checked against PyTorch.
6. ``bundle``: what ``infer`` loads (encoder, head, exported graphs, the extraction settings).
7. ``infer``: the held-out slides end to end with PyTorch and with ONNX Runtime.
8. ``benchmark``: a small CPU suite (MIL head torch vs ONNX Runtime, reading floor) on a held-out slide.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sammil_deploy.errors import ConfigError, ParityError
from sammil_deploy.io_atomic import atomic_path, save_safetensors, write_json, write_text
from sammil_deploy.pipeline import demo_sam
from sammil_deploy.runtime.factory import BACKEND_KINDS, GPU_ONLY_KINDS

log = logging.getLogger(__name__)

STAGES = ("data", "weights", "extract", "train", "export", "bundle", "infer", "benchmark")
MODELS = ("sammil", "abmil")
INFER_BACKENDS = tuple(k for k in BACKEND_KINDS if k not in GPU_ONLY_KINDS)  # torch, onnxruntime
SUMMARY_NAME = "demo_summary.json"
# The values of training/demo.toml (tests check they agree): a few epochs, small head, beta lowered for small bags.
DEMO_RECIPE = {
    "model.embed_dim": 128,
    "model.attn_dim": 64,
    "sammil.objective": "paper",
    "sammil.beta": 10.0,
    "train.lr": 1e-3,
    "train.epochs": 100,
    "train.monitor": "loss",
    "train.patience": 0,
    "train.min_epochs": 0,
    "train.threads": 2,
    "data.folds": 3,
    "data.val_fraction": 0.25,
}
Progress = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Demo size and settings.

    Attributes:
        n_slides: Slides in the cohort (one per class is held out of training).
        size_px: Slide width in level-0 pixels (``quick``: smaller slides, fewer patches).
        epochs: Training epochs per fold.
        num_workers: Patch-reader processes.
        batch_size: Patches per encoder call.
        threads: torch / ONNX Runtime CPU threads.
        seed: Seed of the cohort, the random encoder and training.
        benchmark: Run the benchmark stage.
        sam: Segment with the demo's random tiny SAM (``demo_sam``) instead of the fallback, and export it into
            the bundle so ``infer`` runs the SAM chain; its masks are not meaningful.
    """

    n_slides: int = 12
    size_px: int = 9216
    epochs: int = 100
    num_workers: int = 2
    batch_size: int = 16
    threads: int = 2
    seed: int = 0
    benchmark: bool = True
    sam: bool = False

    def __post_init__(self) -> None:
        if self.n_slides < 8:
            raise ConfigError(f"demo needs >= 8 slides (2 held out, 3-fold CV on the rest), got {self.n_slides}")
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1 or self.num_workers < 0:
            raise ConfigError("demo: epochs, batch_size and threads must be >= 1, num_workers >= 0")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """8 smaller slides and 5 epochs: about half the time."""
        return cls(**{"n_slides": 8, "size_px": 6144, "epochs": 5, **overrides})


@dataclass
class StageRecord:
    """One stage: whether it ran or reused earlier output, how long it took, and what it left where."""

    name: str
    status: str
    seconds: float
    artifacts: dict[str, str] = field(default_factory=dict)


@dataclass
class DemoResult:
    """Everything the demo did and found (also written to ``<out>/demo_summary.json``)."""

    out_dir: Path
    stages: list[StageRecord] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    upstream_ran: bool = False  # once a stage runs, every later stage runs too (its inputs changed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {
            "out_dir": str(self.out_dir),
            "random_encoder_weights": True,
            "random_sam_weights": "sam" in self.metrics,
            "stages": [vars(s) for s in self.stages],
            "metrics": self.metrics,
        }


def _stage(
    result: DemoResult,
    name: str,
    done: bool,
    progress: Progress,
    run: Callable[[], object],
    artifacts: dict[str, Any],
) -> None:
    """Run a stage unless its final output exists (``done``) and no earlier stage ran; record its artifacts."""
    done = done and not result.upstream_ran
    progress(name, "reusing earlier output" if done else "running")
    start = time.perf_counter()
    if not done:
        run()
        result.upstream_ran = True
    status = "reused" if done else "done"
    result.stages.append(
        StageRecord(name, status, time.perf_counter() - start, {k: str(v) for k, v in artifacts.items()})
    )


def run_demo(out_dir: Path, cfg: DemoConfig | None = None, *, progress: Progress | None = None) -> DemoResult:
    """Run (or resume) every demo stage in ``out_dir``; returns where each artifact is and the key numbers.

    Raises:
        SammilError: A stage failed (its message names the stage's input and the fix); finished stages are kept
            and reused by the next run.
    """
    from sammil_deploy.pipeline.extract import extract_slides, features_path_for, load_extract_config

    cfg = cfg or DemoConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda stage, message: log.info("%s: %s", stage, message))
    result = DemoResult(out_dir)
    data, extract_dir = out_dir / "data", out_dir / "extract"
    data_artifacts = {"slides": data, "labels": data / "labels.csv", "train_labels": data / "train_labels.csv"}
    _stage(result, "data", (data / "train_labels.csv").is_file(), say, lambda: _cohort(data, cfg), data_artifacts)
    cohort = _cohort(data, cfg)  # reads the written cohort back
    weights = out_dir / "weights" / "resnet50_trunc_RANDOM.safetensors"
    sam_weights = out_dir / "weights" / demo_sam.SAM_WEIGHTS_NAME if cfg.sam else None
    demo_sam.claim_folder(out_dir, "sam" if cfg.sam else "fallback")
    if sam_weights is not None and not sam_weights.is_file():
        demo_sam.write_random_sam(sam_weights, cfg.seed)
    extract_cfg = load_extract_config(
        preset="bwh_biopsy",
        overrides={
            **demo_sam.segment_overrides(sam_weights),
            "features.weights": weights,
            "features.batch_size": cfg.batch_size,
            "features.num_workers": cfg.num_workers,
            "features.device": "cpu",
        },
    )
    slides = [data / f"{sid}.svs" for sid in cohort["train_ids"]]
    _stage(
        result,
        "weights",
        weights.is_file(),
        say,
        lambda: _random_encoder(weights, cfg.seed, slides[:4], extract_cfg),
        {"encoder_weights": weights},
    )
    done = all(features_path_for(extract_dir, s).is_file() for s in slides)

    def extract() -> None:
        summary = extract_slides(
            slides, extract_cfg, extract_dir, continue_on_error=False, overwrite=result.upstream_ran
        )
        patches = [r.result.n_patches for r in summary.done if r.result is not None]
        if patches:
            result.metrics["extract_patches_per_slide"] = round(sum(patches) / len(patches), 1)

    features_dir = extract_dir / "features"
    _stage(result, "extract", done, say, extract, {"features": features_dir, "segments": extract_dir / "segments"})
    for model in MODELS:
        _train(result, model, features_dir, cohort["train_labels"], out_dir / "train" / model, cfg, say)
    checkpoint = Path(json.loads((out_dir / "train" / "sammil" / "summary.json").read_text())["checkpoints"][0])
    _export_and_bundle(result, checkpoint, weights, sam_weights, extract_cfg, out_dir, say)
    held_out = [data / f"{sid}.svs" for sid in cohort["held_out_ids"]]
    _infer(result, held_out, cohort["labels"], out_dir, cfg, say)
    if cfg.benchmark:
        _benchmark(result, held_out[0], out_dir / "benchmark", cfg, say)
    _write_json(out_dir / SUMMARY_NAME, result.to_dict())
    return result


def _cohort(data: Path, cfg: DemoConfig) -> dict[str, Any]:
    """Write (or read back) the cohort; hold out the last slide of each class; write ``train_labels.csv``."""
    from sammil_deploy.slide.cohort import make_demo_cohort

    labels_csv, train_csv = data / "labels.csv", data / "train_labels.csv"
    if not train_csv.is_file():
        make_demo_cohort(data, n_slides=cfg.n_slides, seed=cfg.seed, size_px=cfg.size_px)
    with labels_csv.open() as f:
        labels = {row["slide_id"]: int(row["label"]) for row in csv.DictReader(f)}
    held_out = [max(sid for sid, y in labels.items() if y == label) for label in (0, 1)]
    train_ids = [sid for sid in labels if sid not in held_out]
    if not train_csv.is_file():
        with atomic_path(train_csv) as tmp, tmp.open("w", newline="") as f:
            csv.writer(f).writerows([("slide_id", "label"), *((sid, labels[sid]) for sid in train_ids)])
    return {"labels": labels, "train_ids": train_ids, "held_out_ids": held_out, "train_labels": train_csv}


def _random_encoder(path: Path, seed: int, calibration_slides: list[Path], extract_cfg: Any) -> Path:
    """Seeded random ResNet50-trunc weights (the file name says RANDOM; features are not meaningful).

    Random weights keep BatchNorm's initial running statistics (mean 0, variance 1), under which activations
    grow block after block: every feature becomes a large constant offset with little variation between
    patches, and a MIL head trained on that saturates. Re-estimating the BatchNorm statistics on demo patches
    (weights untouched) gives features on the scale of a trained network's.
    """
    import torch

    from sammil_deploy.features.encoders import create_encoder

    if not path.is_file():
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoder = create_encoder("resnet50_trunc", allow_random=True)
        _calibrate_batchnorm(encoder, calibration_slides, extract_cfg)
        state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
        save_safetensors(path, state, metadata={"random_weights": "true"})  # bundles and reports say so
    return path


def _calibrate_batchnorm(encoder: Any, slides: list[Path], extract_cfg: Any, patches_per_slide: int = 16) -> None:
    """Set every BatchNorm's running mean/variance to their averages over patches spread across ``slides``."""
    import numpy as np
    import torch

    from sammil_deploy.features.preprocess_ops import PatchTransform, normalize_batch
    from sammil_deploy.patching import make_patch_grid
    from sammil_deploy.patching.dataset import PatchDataset
    from sammil_deploy.slide import open_slide
    from sammil_deploy.tissue import detect_tissue

    transform = PatchTransform(encoder.input_size_px, encoder.interpolation)
    patches = []
    for slide in slides:
        with open_slide(slide) as reader:
            grid = make_patch_grid(reader.info, detect_tissue(reader, extract_cfg.tissue), extract_cfg.patch)
        rows = np.unique(np.linspace(0, len(grid) - 1, min(patches_per_slide, len(grid))).astype(int))
        dataset = PatchDataset(
            slide, grid.coords_level0_xy[rows], grid.patch_size_level0_px, grid.patch_level, transform,
            read_size_px=grid.patch_size_px,
        )  # fmt: skip
        patches += [dataset[i][0] for i in range(len(dataset))]
        dataset.close()
    batch = normalize_batch(torch.stack(patches), encoder.mean, encoder.std)
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    encoder.train()
    with torch.no_grad():
        for chunk in batch.split(32):
            encoder(chunk)
    encoder.eval()
    for norm in norms:
        norm.momentum = 0.1


def _train(
    result: DemoResult, model: str, features: Path, labels: Path, out: Path, cfg: DemoConfig, say: Progress
) -> None:
    from sammil_deploy.mil.config import load_recipe
    from sammil_deploy.mil.run import train_cross_validation

    summary_json = out / "summary.json"

    def run() -> None:
        # The recipe goes in as the file layer, so the model preset (abmil: no SAM-MIL parts) applies over it.
        recipe_toml = write_recipe_toml(out.parent / "demo_recipe.toml")
        recipe = load_recipe(recipe_toml, preset=model, overrides={"train.epochs": cfg.epochs, "train.seed": cfg.seed})
        train_cross_validation(features, labels, recipe, out)

    _stage(result, f"train {model}", summary_json.is_file(), say, run, {"checkpoints": out, "summary": summary_json})
    summary = json.loads(summary_json.read_text())
    result.metrics[f"{model}_cv_test_auc"] = summary["mean_std"].get("auc")


def write_recipe_toml(path: Path) -> Path:
    """``DEMO_RECIPE`` as a recipe TOML file (one table per section)."""
    tables: dict[str, list[str]] = {}
    for key, value in DEMO_RECIPE.items():
        section, name = key.split(".", 1)
        tables.setdefault(section, []).append(f"{name} = {json.dumps(value)}")
    text = "\n\n".join(f"[{section}]\n" + "\n".join(lines) for section, lines in tables.items()) + "\n"
    return write_text(path, text)


def _export_and_bundle(
    result: DemoResult,
    checkpoint: Path,
    weights: Path,
    sam_weights: Path | None,
    extract_cfg: Any,
    out_dir: Path,
    say: Progress,
) -> None:
    from sammil_deploy.export.api import MANIFEST_NAME, export_all
    from sammil_deploy.export.config import ExportConfig
    from sammil_deploy.pipeline.bundle import MANIFEST_NAME as BUNDLE_MANIFEST
    from sammil_deploy.pipeline.bundle import make_bundle

    export_dir, bundle_dir = out_dir / "export", out_dir / "bundle"

    def export() -> None:
        parts = "sam-encoder,sam-decoder,resnet50,mil" if sam_weights is not None else "resnet50,mil"
        report = export_all(
            checkpoint, sam_weights, "tiny", weights, export_dir, ExportConfig(precision="fp32"), only=parts
        )
        if not report.passed:
            raise ParityError(f"demo export: parity failed: {'; '.join(report.failures())}")

    manifest = export_dir / MANIFEST_NAME
    _stage(result, "export", manifest.is_file(), say, export, {"onnx": export_dir, "manifest": manifest})
    _stage(
        result,
        "bundle",
        (bundle_dir / BUNDLE_MANIFEST).is_file(),
        say,
        lambda: make_bundle(bundle_dir, checkpoint, export_dir, extract_cfg, overwrite=True),
        {"bundle": bundle_dir},
    )


def _infer(
    result: DemoResult, slides: list[Path], labels: dict[str, int], out_dir: Path, cfg: DemoConfig, say: Progress
) -> None:
    from sammil_deploy.pipeline.bundle import load_bundle
    from sammil_deploy.pipeline.infer import InferConfig, output_path, run_slides
    from sammil_deploy.viz.cohort_report import REPORT_NAME, write_cohort_report

    bundle = load_bundle(out_dir / "bundle")
    predictions: dict[str, dict[str, Any]] = {}
    reports: dict[str, dict[str, Any]] = {}
    for backend in INFER_BACKENDS:
        folder = out_dir / "infer" / backend
        done = all(output_path(folder, s, "report").is_file() for s in slides)

        infer_cfg = InferConfig(
            backend=backend,
            device="cpu",
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            intra_op_threads=cfg.threads,
        )
        _stage(
            result,
            f"infer {backend}",
            done,
            say,
            lambda c=infer_cfg, f=folder: run_slides(slides, bundle, c, f, overwrite=True, continue_on_error=False),
            {"reports": folder / "reports", "heatmaps": folder / "heatmaps", "summary": folder / "summary.csv",
             "report_html": folder / REPORT_NAME},
        )  # fmt: skip
        if not (folder / REPORT_NAME).is_file():  # a demo folder from before the cohort page existed
            write_cohort_report(folder)
        result.metrics.setdefault("cohort_reports", {})[backend] = str(folder / REPORT_NAME)
        for slide in slides:
            report = json.loads(output_path(folder, slide, "report").read_text())
            reports[f"{slide.stem} {backend}"] = report
            predictions.setdefault(slide.stem, {"label": labels[slide.stem]})[backend] = report["prediction"]
    diffs = [
        abs(p["torch"]["probabilities"][c] - p["onnxruntime"]["probabilities"][c])
        for p in predictions.values()
        for c in p["torch"]["probabilities"]
    ]
    result.metrics["held_out"] = predictions
    if bundle.preprocess.segment.resolved_segmenter == "sam":
        result.metrics["sam"] = demo_sam.sam_metrics(reports)
    result.metrics["torch_vs_onnxruntime_max_prob_diff"] = max(diffs) if diffs else None


def _benchmark(result: DemoResult, slide: Path, out: Path, cfg: DemoConfig, say: Progress) -> None:
    from sammil_deploy.bench.report import write_json, write_markdown
    from sammil_deploy.bench.run import run_suite
    from sammil_deploy.bench.suites import ModelBench, ReadingBench, SuiteConfig
    from sammil_deploy.bench.timing import TimingPolicy

    results_json, results_md = out / "results.json", out / "results.md"

    def run() -> None:
        suite = SuiteConfig(
            name="demo",
            description="the demo's subset of cpu-quick: MIL head torch vs ONNX Runtime, reading floor",
            device="cpu",
            threads=cfg.threads,
            slide=str(slide),
            timing=TimingPolicy(warmup=2, iters=10, min_seconds=0.5, max_seconds=5.0),
            mil=ModelBench(variants=("torch:fp32", "ort-cpu:fp32"), sizes=(1000, 10000)),
            reading=ReadingBench(workers=(1, cfg.num_workers) if cfg.num_workers > 1 else (1,), regions=64),
        )
        report = run_suite(suite, work_dir=out / "work", progress=lambda message: say("benchmark", message))
        write_json(report, results_json)
        write_markdown(report, results_md)

    artifacts = {"results_json": results_json, "results_md": results_md}
    _stage(result, "benchmark", results_json.is_file(), say, run, artifacts)
    result.metrics["benchmark"] = str(results_json)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_json(path, payload, sort_keys=False)
