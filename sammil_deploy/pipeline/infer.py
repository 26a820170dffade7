"""End-to-end inference: slide → tissue → patches → SAM segments → features → group tokens → MIL head → outputs.

Per slide, under ``out_dir``: ``heatmaps/<id>.png``, ``geojson/<id>.geojson``, optionally ``features/<id>.h5``
(the ``extract`` layout, so inference doubles as extraction) and, written last, ``reports/<id>.json`` whose
presence marks the slide done. Patches are read and resized by reader processes started once per run
(``patching.reader_pool``) while the encoder runs (bounded prefetch, pinned memory on CUDA); in a cohort, the
next slide's tissue detection and segmentation run in a helper thread meanwhile (``pipeline.lookahead``, one
slide ahead). Only the thumbnail, the SAM image
and the (N, D) features are held in memory, never a full-resolution slide array.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.config import apply_overrides, from_mapping, read_toml, to_dict
from sammil_deploy.errors import ConfigError
from sammil_deploy.pipeline.batch import BatchSummary, SlideRecord
from sammil_deploy.pipeline.lookahead import run_slides_ahead
from sammil_deploy.pipeline.slide_steps import finish_slide, prepare_slide
from sammil_deploy.viz.heatmap import SCALINGS

if TYPE_CHECKING:
    from sammil_deploy.patching.reader_pool import ReaderPool
    from sammil_deploy.pipeline.bundle import Bundle
    from sammil_deploy.pipeline.models import SlideModels

log = logging.getLogger(__name__)

STAGES = ("open", "tissue", "patching", "segmentation", "features", "mil", "outputs")
OUTPUT_DIRS = {"report": ("reports", ".json"), "heatmap": ("heatmaps", ".png"), "geojson": ("geojson", ".geojson")}
StageProgress = Callable[[Path, str, int, int], None]


@dataclass(frozen=True, slots=True)
class InferConfig:
    """Runtime settings of ``infer`` (the preprocessing comes from the bundle, as trained).

    Attributes:
        backend: ``torch``, ``onnxruntime`` or ``tensorrt`` for the encoder, the MIL head and exported SAM.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``torch``: autocast ``fp32``/``bf16``/``fp16``; exported backends: which artifacts to load.
        batch_size: Patches per encoder call.
        num_workers: Patch-reader processes (0: read in the calling process, no overlap).
        prefetch_batches: Batches each reader keeps ready (bounds queued memory).
        intra_op_threads: ONNX Runtime CPU threads (0: its default).
        save_features: Also write ``features/<id>.h5`` (the ``extract`` feature file).
        heatmap_scaling: ``rank`` or ``percentile`` (see ``viz.heatmap``).
        heatmap_max_size_px: Long side of the heatmap's thumbnail.
        mpp: Microns per level-0 pixel for slides without metadata (default: the bundle's).
        top_k: Most-attended patches listed in the report.
        threshold: Binary decision: ``youden`` (default: the bundle's recorded threshold, chosen at training),
            ``0.5``, or a probability in (0, 1) as text; decisions are made on the logit margin.
    """

    backend: str = "torch"
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 32
    num_workers: int = 2
    prefetch_batches: int = 2
    intra_op_threads: int = 0
    save_features: bool = False
    heatmap_scaling: str = "rank"
    heatmap_max_size_px: int = 2048
    mpp: float | None = None
    top_k: int = 10
    threshold: str = "youden"

    def __post_init__(self) -> None:
        from sammil_deploy.pipeline.models import BACKENDS

        if self.backend not in BACKENDS:
            raise ConfigError(f"infer.backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.precision not in ("fp32", "bf16", "fp16", "int8"):
            raise ConfigError(f"infer.precision must be fp32, bf16, fp16 or int8, got {self.precision!r}")
        for name in ("batch_size", "prefetch_batches", "heatmap_max_size_px"):
            if getattr(self, name) < 1:
                raise ConfigError(f"infer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "intra_op_threads", "top_k"):
            if getattr(self, name) < 0:
                raise ConfigError(f"infer.{name} must be >= 0, got {getattr(self, name)}")
        if self.heatmap_scaling not in SCALINGS:
            raise ConfigError(f"infer.heatmap_scaling must be one of {list(SCALINGS)}, got {self.heatmap_scaling!r}")
        if self.mpp is not None and self.mpp <= 0:
            raise ConfigError(f"infer.mpp must be > 0, got {self.mpp}")
        from sammil_deploy.mil.threshold import parse_threshold_option

        object.__setattr__(self, "threshold", str(parse_threshold_option(self.threshold)))


def load_infer_config(path: Path | None = None, *, overrides: Mapping[str, Any] | None = None) -> InferConfig:
    """Defaults < TOML file (top level or an ``[infer]`` table) < overrides (``None`` values skipped)."""
    data = dict(read_toml(path)) if path is not None else {}
    if isinstance(data.get("infer"), Mapping):
        data = dict(data["infer"])
    return apply_overrides(from_mapping(InferConfig, data, section="infer"), dict(overrides or {}))


def output_path(out_dir: Path, slide: Path, kind: str) -> Path:
    """``<out>/reports/<id>.json`` (``kind="report"``), ``heatmaps/<id>.png``, ``geojson/<id>.geojson``."""
    folder, suffix = OUTPUT_DIRS[kind]
    return Path(out_dir) / folder / f"{Path(slide).stem}{suffix}"


@dataclass(frozen=True)
class SlideResult:
    """What ``run_slide`` found and wrote for one slide.

    Attributes:
        slide_id: Slide file stem.
        report: The JSON report's content (see ``pipeline.report``).
        paths: ``{"report", "heatmap", "geojson"[, "features"]}`` absolute output paths.
        attention: (N + G,) float32 attention of the bag (patch rows, then group tokens).
        stage_seconds: Wall time per stage (:data:`STAGES`).
        seconds: Total wall time.
    """

    slide_id: str
    report: dict[str, Any]
    paths: dict[str, Path]
    attention: np.ndarray
    stage_seconds: dict[str, float]
    seconds: float

    @property
    def probabilities(self) -> dict[str, float]:
        """Probability per class name."""
        return dict(self.report["prediction"]["probabilities"])

    @property
    def label(self) -> str:
        """Predicted class name."""
        return str(self.report["prediction"]["label"])

    @property
    def n_patches(self) -> int:
        """Patches N."""
        return int(self.report["counts"]["patches"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (the report plus output paths)."""
        return {**self.report, "paths": {k: str(v) for k, v in self.paths.items()}}


def run_slide(
    path: Path,
    bundle: Bundle,
    cfg: InferConfig,
    out_dir: Path,
    *,
    models: SlideModels | None = None,
    progress: StageProgress | None = None,
    readers: ReaderPool | None = None,
) -> SlideResult:
    """Run the whole pipeline on one slide and write its outputs (report last, each file atomically).

    Args:
        path: Slide file.
        bundle: From ``load_bundle``; its preprocessing is used as trained.
        cfg: Backend, device, batching, outputs.
        out_dir: Output root.
        models: Networks loaded once for many slides (``load_models``); loaded (and closed) here when None.
        progress: ``progress(slide, stage, done, total)`` at each stage start (0, 1) and per encoder batch.
        readers: Reader processes kept across slides (``patching.reader_pool``); started for this slide when None.

    Returns:
        The report, output paths, attention and timings.

    Raises:
        SlideError, TissueError, PatchingError, SegmentationError: Bad slide; nothing is left in ``out_dir``.
        BackendError, InputSpecError: The backend failed.
    """
    from sammil_deploy.pipeline.models import load_models

    if models is None:
        with load_models(bundle, cfg.backend, device=cfg.device, precision=cfg.precision,
                         intra_op_threads=cfg.intra_op_threads) as own:  # fmt: skip
            return run_slide(path, bundle, cfg, out_dir, models=own, progress=progress, readers=readers)
    prepared = prepare_slide(path, bundle, cfg, models, progress=progress)
    try:
        return finish_slide(prepared, bundle, cfg, out_dir, models, progress=progress, readers=readers)
    finally:
        prepared.reader.close()


def run_slides(
    paths: Iterable[Path],
    bundle: Bundle,
    cfg: InferConfig,
    out_dir: Path,
    *,
    overwrite: bool = False,
    continue_on_error: bool = True,
    on_record: Callable[[SlideRecord[SlideResult]], None] | None = None,
    progress: StageProgress | None = None,
) -> BatchSummary[SlideResult]:
    """``run_slide`` over many slides with the networks loaded once; writes ``<out>/summary.csv`` at the end.

    Slides whose report exists are skipped (resume) unless ``overwrite``; a slide raising a SammilError is
    recorded and the run goes on (unless ``continue_on_error`` is False). The summary lists every slide,
    skipped ones from their existing reports.

    Raises:
        ConfigError: Two slides share a slide id.
        BackendError, WeightsError: The networks cannot be loaded (nothing can run then).
    """
    from sammil_deploy.pipeline.models import load_models

    paths = [Path(p) for p in paths]
    check_unique_ids(paths)
    todo = [p for p in paths if overwrite or not output_path(out_dir, p, "report").exists()]
    models = None
    if todo:
        models = load_models(bundle, cfg.backend, device=cfg.device, precision=cfg.precision,
                             intra_op_threads=cfg.intra_op_threads)  # fmt: skip
    try:
        # One reader pool for the run; slide k+1 is prepared (tissue, grid, segmentation) while slide k is encoded.
        summary = run_slides_ahead(
            paths,
            todo,
            lambda p: prepare_slide(p, bundle, cfg, models, progress=progress),
            lambda prepared: prepared.reader.close(),
            lambda prepared, readers: finish_slide(
                prepared, bundle, cfg, out_dir, models, progress=progress, readers=readers
            ),  # fmt: skip
            lambda p: output_path(out_dir, p, "report"),
            num_workers=cfg.num_workers,
            prefetch_batches=cfg.prefetch_batches,
            overwrite=overwrite,
            continue_on_error=continue_on_error,
            on_record=on_record,
        )
    finally:
        if models is not None:
            models.close()
    write_summary(out_dir, [record_dict(r, out_dir) for r in summary.records], bundle.class_names)
    return summary


def check_unique_ids(paths: list[Path]) -> None:
    """Raise ConfigError if two slides would write the same outputs (``a.svs`` and ``a.tif``)."""
    stems = [p.stem for p in paths]
    clashes = sorted({str(p) for p in paths if stems.count(p.stem) > 1})
    if clashes:
        raise ConfigError(f"slides share a slide id (file name without extension), so outputs would clash: {clashes}")


def record_dict(record: SlideRecord[SlideResult], out_dir: Path) -> dict[str, Any]:
    """A batch record as the summary needs it; a skipped slide's report is read from disk."""
    from sammil_deploy.pipeline.report import read_report

    report_path = output_path(out_dir, record.slide, "report")
    report = None
    if record.status == "done" and record.result is not None:
        report = record.result.report
    elif record.status == "skipped":
        report = read_report(report_path)
    return {
        "slide": str(record.slide),
        "status": record.status,
        "seconds": round(record.seconds, 3),
        "report": report,
        "report_path": str(report_path) if report is not None else "",
        "error_type": record.error_type,
        "detail": record.detail,
    }


def write_summary(out_dir: Path, records: list[dict[str, Any]], class_names: tuple[str, ...]) -> Path:
    """``<out>/summary.csv`` from :func:`record_dict` entries, then the cohort page ``<out>/report.html`` from it."""
    from sammil_deploy.pipeline.report import SUMMARY_NAME, summary_rows, write_summary_csv
    from sammil_deploy.viz.cohort_report import write_cohort_report

    path = write_summary_csv(Path(out_dir) / SUMMARY_NAME, summary_rows(records, class_names), class_names)
    write_cohort_report(out_dir)
    return path


def config_snapshot(bundle: Bundle, cfg: InferConfig) -> dict[str, Any]:
    """The settings stored in each report: runtime config and the bundle's preprocessing."""
    return {"infer": to_dict(cfg), "preprocess": bundle.manifest["preprocess"]}


def collect_slides(inputs: Iterable[Path]) -> list[Path]:
    """Slides from arguments: slide files, folders of slides, or ``.txt``/``.csv`` lists (one path per line).

    In a list, blank lines and ``#`` comments are skipped, a CSV's first column is the path (a header row whose
    first cell is ``slide`` or ``path`` is skipped), and relative paths are relative to the list's folder.

    Raises:
        SlideError: A path that does not exist, or a folder without slides.
    """
    from sammil_deploy.errors import SlideError
    from sammil_deploy.slide import find_slides

    slides: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_file() and item.suffix.lower() in (".txt", ".csv"):
            lines = [line.split(",")[0].strip() for line in item.read_text().splitlines()]
            entries = [e for e in lines if e and not e.startswith("#")]
            if entries and entries[0].lower() in ("slide", "path", "slide_path"):
                entries = entries[1:]
            for entry in entries:
                path = Path(entry) if Path(entry).is_absolute() else item.parent / entry
                if not path.is_file():
                    raise SlideError(f"{item}: listed slide {entry} not found; fix the list")
                slides.append(path)
        else:
            slides.extend(find_slides(item))
    if not slides:
        raise SlideError("no slides given; pass slide files, folders or a .txt list")
    return slides
