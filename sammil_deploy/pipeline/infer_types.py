"""What ``infer``'s parts share: its settings, a slide's result and where the outputs go.

``pipeline.infer`` (the driver), ``pipeline.slide_steps`` and ``pipeline.outputs`` all import from here, so the
imports run one way: infer → slide_steps → outputs → infer_types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.config import to_dict
from sammil_deploy.errors import ConfigError
from sammil_deploy.viz.heatmap import SCALINGS

if TYPE_CHECKING:
    from sammil_deploy.bundle import Bundle
    from sammil_deploy.features.bag import SpatialContext
    from sammil_deploy.patching import PatchGrid
    from sammil_deploy.segment import Segmentation
    from sammil_deploy.slide import SlideReader

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
        from sammil_deploy.runtime import check_backend_kind

        check_backend_kind(self.backend, option="infer.backend")
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


def config_snapshot(bundle: Bundle, cfg: InferConfig) -> dict[str, Any]:
    """The settings stored in each report: runtime config and the bundle's preprocessing."""
    return {"infer": to_dict(cfg), "preprocess": bundle.manifest["preprocess"]}


@dataclass(frozen=True)
class SlideInference:
    """One slide after the MIL head: everything its outputs are made from (``pipeline.outputs``).

    Attributes:
        path: Slide file.
        reader: The open slide (for the thumbnail and the report's pictures).
        grid: The slide's patches.
        features: (N, D) float32 patch features.
        context: Segments and group tokens.
        segmentation: The masks (count, segmenter config, SAM profile).
        head: MIL backend outputs ``logits (C,)``, ``probabilities (C,)``, ``attention (N + G,)``.
        stage_seconds: Stage timings so far (the report gets them, plus the outputs stage itself).
        start: ``time.perf_counter()`` at the slide's start.
    """

    path: Path
    reader: SlideReader
    grid: PatchGrid
    features: np.ndarray
    context: SpatialContext
    segmentation: Segmentation
    head: dict[str, np.ndarray]
    stage_seconds: dict[str, float]
    start: float
