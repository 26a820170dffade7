"""Extract slides: tissue → patch grid → segments → patch features → group features → ``features/<id>.h5``.

The feature HDF5 (``features.store`` schema) is written last and atomically, so its presence marks a slide
done and a rerun over a folder skips it. The SAM image and masks go to ``segments/<id>.npz`` for inspection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sammil_deploy.config import load_config, to_dict
from sammil_deploy.pipeline.batch import BatchSummary, SlideRecord
from sammil_deploy.pipeline.lookahead import run_slides_ahead
from sammil_deploy.preprocessing import SlideExtractConfig
from sammil_deploy.tissue import with_tissue_preset

if TYPE_CHECKING:
    from sammil_deploy.features.encoders import PatchEncoder
    from sammil_deploy.patching import PatchGrid
    from sammil_deploy.patching.reader_pool import ReaderPool
    from sammil_deploy.runtime import Backend
    from sammil_deploy.segment import PatchAssignment, SamImage, Segmentation, Segmenter
    from sammil_deploy.slide import SlideInfo

log = logging.getLogger(__name__)

FEATURES_DIR = "features"
SEGMENTS_DIR = "segments"

PatchProgress = Callable[[Path, int, int], None]


def load_extract_config(
    path: Path | None = None, *, preset: str | None = None, overrides: Mapping[str, Any] | None = None
) -> SlideExtractConfig:
    """Defaults < tissue preset < TOML file < overrides (dotted keys such as ``"features.batch_size"``).

    The TOML holds ``[tissue]``, ``[patch]``, ``[segment]`` and ``[features]`` tables and top-level ``mpp`` /
    ``save_segmentation`` (inside an ``[extract]`` table if the file has one); ``preset = "tcga"`` names a CLAM
    tissue preset, and ``preset`` here wins over it.

    Raises:
        ConfigError: On an unreadable file, unknown key, unknown preset or invalid value.
    """
    return load_config(
        SlideExtractConfig, path, table="extract", prepare=lambda data: with_tissue_preset(data, preset),
        overrides=overrides,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExtractResult:
    """What ``extract_slide`` wrote and found.

    Attributes:
        slide_id: Slide file stem.
        features_path: The feature HDF5.
        segments_path: The segmentation ``.npz``, or ``None`` when not saved.
        n_patches: Patch rows N.
        n_masks: Masks the segmenter returned.
        n_groups: Group tokens G (masks with at least one member patch).
        segmenter: Which segmenter ran.
        encoder: Encoder name.
        weights_sha256: SHA-256 of the encoder weights, or ``"random"``.
        stage_seconds: Wall time per stage (``tissue_patching``, ``segmentation``, ``features``, ``write``).
        seconds: Total wall time.
    """

    slide_id: str
    features_path: Path
    segments_path: Path | None
    n_patches: int
    n_masks: int
    n_groups: int
    segmenter: str
    encoder: str
    weights_sha256: str
    stage_seconds: dict[str, float]
    seconds: float

    @property
    def patches_per_s(self) -> float:
        """Feature-extraction throughput of this slide (patches / features-stage seconds)."""
        feats_s = self.stage_seconds.get("features", 0.0)
        return self.n_patches / feats_s if feats_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {
            "slide_id": self.slide_id,
            "features_path": str(self.features_path),
            "segments_path": None if self.segments_path is None else str(self.segments_path),
            "n_patches": self.n_patches,
            "n_masks": self.n_masks,
            "n_groups": self.n_groups,
            "segmenter": self.segmenter,
            "encoder": self.encoder,
            "weights_sha256": self.weights_sha256,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "patches_per_s": round(self.patches_per_s, 2),
            "seconds": round(self.seconds, 3),
        }


def features_path_for(out_dir: Path, slide: Path) -> Path:
    """``<out>/features/<slide_id>.h5`` (the final output of a slide: its presence means done)."""
    return Path(out_dir) / FEATURES_DIR / f"{Path(slide).stem}.h5"


def segments_path_for(out_dir: Path, slide: Path) -> Path:
    """``<out>/segments/<slide_id>.npz``."""
    return Path(out_dir) / SEGMENTS_DIR / f"{Path(slide).stem}.npz"


def extract_slide(
    path: Path,
    cfg: SlideExtractConfig,
    out_dir: Path,
    *,
    encoder: PatchEncoder | None = None,
    backend: Backend | None = None,
    segmenter: Segmenter | None = None,
    progress: PatchProgress | None = None,
    prepared: PreparedExtract | None = None,
    readers: ReaderPool | None = None,
) -> ExtractResult:
    """Run the whole extraction on one slide and write its feature file.

    Args:
        path: Slide file.
        cfg: Stage configs.
        out_dir: Output root (``features/`` and ``segments/`` are created inside).
        encoder: A built encoder to reuse across slides; built from ``cfg.features`` when None.
        backend: Its feature backend (``open_feature_backend``) to reuse across slides; opened (and closed) here
            when None.
        segmenter: A segmenter to reuse across slides (``segment.create_segmenter``); built when needed.
        progress: Called as ``progress(slide, patches_done, patches_total)`` during feature extraction.
        prepared: The slide's :func:`prepare_extract` result when it was prepared ahead; done here when None.
        readers: Reader processes kept across slides; started for this slide when None.

    Returns:
        Counts, provenance and per-stage timings.

    Raises:
        SlideError, TissueError, PatchingError, SegmentationError, WeightsError, ConfigError: On bad input;
            nothing is left in ``out_dir`` for this slide then.
    """
    from sammil_deploy.features.encoding import build_encoder
    from sammil_deploy.features.engine import encode_patches
    from sammil_deploy.pipeline.feature_backend import open_feature_backend
    from sammil_deploy.pipeline.stages import spatial_context

    path = Path(path)
    encoder = encoder if encoder is not None else build_encoder(cfg.features)
    if backend is None:
        with open_feature_backend(encoder, cfg.features) as own:
            return extract_slide(path, cfg, out_dir, encoder=encoder, backend=own, segmenter=segmenter,
                                 progress=progress, prepared=prepared, readers=readers)  # fmt: skip
    prepared = prepared if prepared is not None else prepare_extract(path, cfg, segmenter=segmenter)
    grid, stages, start = prepared.grid, prepared.stages, prepared.start
    features = encode_patches(
        path, grid.coords_level0_xy, backend, patch_level=grid.patch_level, read_size_px=grid.read_size_px,
        input_size_px=encoder.input_size_px, interpolation=cfg.features.interpolation or encoder.interpolation,
        batch_size=cfg.features.batch_size, num_workers=cfg.features.num_workers, reader=cfg.features.reader,
        resize=cfg.features.resize, mpp=cfg.mpp, pool=readers,
        progress=None if progress is None else lambda done, total: progress(path, done, total),
    )  # fmt: skip
    stages["features"] = _lap(start, stages)
    context = spatial_context(features, prepared.assignment)
    out_path, saved_seg = _write_slide(path, cfg, out_dir, encoder, backend, prepared, features, context)
    stages["write"] = _lap(start, stages)
    return ExtractResult(
        slide_id=prepared.info.slide_id,
        features_path=out_path,
        segments_path=saved_seg,
        n_patches=len(grid),
        n_masks=len(prepared.segmentation.crops),
        n_groups=context.n_groups,
        segmenter=context.segmenter,
        encoder=encoder.name,
        weights_sha256=encoder.weights_sha256,
        stage_seconds=stages,
        seconds=time.perf_counter() - start,
    )


def _write_slide(
    path: Path,
    cfg: SlideExtractConfig,
    out_dir: Path,
    encoder: PatchEncoder,
    backend: Backend,
    prepared: PreparedExtract,
    features: Any,
    context: Any,
) -> tuple[Path, Path | None]:
    """Write ``segments/<id>.npz`` (when asked) and then the feature file; returns both paths."""
    from sammil_deploy.features.bag import FeatureBag
    from sammil_deploy.features.engine import resize_place
    from sammil_deploy.features.store import write_bag
    from sammil_deploy.pipeline.stages import bag_attrs
    from sammil_deploy.segment.io import save_segmentation

    grid, interpolation = prepared.grid, cfg.features.interpolation or encoder.interpolation
    attrs = bag_attrs(
        encoder_meta=encoder.meta.to_dict(), interpolation=interpolation, precision=cfg.features.precision,
        extract_config=to_dict(cfg), info=prepared.info, grid=grid, segmenter_config=prepared.segmentation.config,
        membership=prepared.assignment.mode, feature_backend=backend_label(backend),
        slide_reader=prepared.reader_name, resize_place=resize_place(cfg.features.resize, backend.device),
    )  # fmt: skip
    bag = FeatureBag(
        slide_id=prepared.info.slide_id,
        coords_level0_xy=grid.coords_level0_xy,
        features=features,
        patch_size_level0_px=grid.patch_size_level0_px,
        patch_level=grid.patch_level,
        context=context,
        attrs=attrs,
    )
    out_path, seg_path = features_path_for(out_dir, path), segments_path_for(out_dir, path)
    saved_seg: Path | None = None
    try:
        if cfg.save_segmentation:
            seg_path.parent.mkdir(parents=True, exist_ok=True)
            saved_seg = save_segmentation(seg_path, prepared.sam_image, prepared.segmentation)
        write_bag(out_path, bag)  # last: its presence marks the slide done
    except BaseException:
        if saved_seg is not None:
            saved_seg.unlink(missing_ok=True)
        raise
    return out_path, saved_seg


@dataclass(frozen=True, slots=True)
class PreparedExtract:
    """A slide after tissue detection, patch grid and segmentation (what can run one slide ahead)."""

    path: Path
    info: SlideInfo
    reader_name: str
    grid: PatchGrid
    sam_image: SamImage
    segmentation: Segmentation
    assignment: PatchAssignment
    stages: dict[str, float]
    start: float


def prepare_extract(path: Path, cfg: SlideExtractConfig, *, segmenter: Segmenter | None = None) -> PreparedExtract:
    """Open the slide, detect tissue, lay the patch grid, read the SAM image and segment it.

    Raises:
        SlideError, TissueError, PatchingError, SegmentationError: Bad slide.
    """
    from sammil_deploy.patching import make_patch_grid, require_patch_fits
    from sammil_deploy.pipeline.stages import segment_patches
    from sammil_deploy.slide import open_slide
    from sammil_deploy.tissue import detect_tissue

    start = time.perf_counter()
    stages: dict[str, float] = {}
    with open_slide(path, reader=cfg.features.reader, mpp=cfg.mpp) as reader:
        info = reader.info
        require_patch_fits(info, cfg.patch)
        tissue = detect_tissue(reader, cfg.tissue)
        grid = make_patch_grid(info, tissue, cfg.patch)
        stages["tissue_patching"] = _lap(start)
        sam_image, segmentation, assignment = segment_patches(
            reader,
            tissue.bbox_level0,
            grid.coords_level0_xy,
            grid.patch_size_level0_px,
            cfg.segment,
            segmenter=segmenter,
        )
        stages["segmentation"] = _lap(start, stages)
    return PreparedExtract(Path(path), info, reader.name, grid, sam_image, segmentation, assignment, stages, start)


def extract_slides(
    paths: Iterable[Path],
    cfg: SlideExtractConfig,
    out_dir: Path,
    *,
    continue_on_error: bool = True,
    overwrite: bool = False,
    on_record: Callable[[SlideRecord[ExtractResult]], None] | None = None,
    progress: PatchProgress | None = None,
) -> BatchSummary[ExtractResult]:
    """``extract_slide`` over many slides, loading the encoder (and SAM) once.

    Slide k+1's tissue detection and segmentation run in a helper thread while slide k is encoded
    (``pipeline.lookahead``).

    Slides whose feature file exists are skipped unless ``overwrite``; a slide that raises a SammilError is
    recorded and the run goes on (unless ``continue_on_error`` is False).

    Args:
        paths: Slide files.
        cfg: Shared config.
        out_dir: Output root.
        continue_on_error: Record failing slides and go on.
        overwrite: Redo slides that already have a feature file.
        on_record: Called with each slide's record as it finishes.
        progress: Per-patch progress, as in :func:`extract_slide`.

    Returns:
        Per-slide records; ``summary.all_succeeded`` is False if any slide failed.

    Raises:
        WeightsError, ConfigError: If the encoder or SAM cannot be loaded (nothing can run then).
    """
    from sammil_deploy.features.encoding import build_encoder
    from sammil_deploy.pipeline.feature_backend import open_feature_backend
    from sammil_deploy.segment import create_segmenter

    paths = [Path(p) for p in paths]
    todo = [p for p in paths if overwrite or not features_path_for(out_dir, p).exists()]
    encoder = build_encoder(cfg.features) if todo else None
    backend = open_feature_backend(encoder, cfg.features) if encoder is not None else None
    try:
        segmenter = create_segmenter(cfg.segment) if todo else None  # loads SAM once
        return run_slides_ahead(
            paths,
            todo,
            lambda p: prepare_extract(p, cfg, segmenter=segmenter),
            lambda _prepared: None,
            lambda ready, readers: extract_slide(
                ready.path,
                cfg,
                out_dir,
                encoder=encoder,
                backend=backend,
                segmenter=segmenter,
                progress=progress,
                prepared=ready,
                readers=readers,
            ),
            lambda p: features_path_for(out_dir, p),
            num_workers=cfg.features.num_workers,
            overwrite=overwrite,
            continue_on_error=continue_on_error,
            on_record=on_record,
        )
    finally:
        if backend is not None:
            backend.close()


def _lap(start: float, stages: Mapping[str, float] | None = None) -> float:
    """Seconds since ``start`` minus the stages already timed."""
    return time.perf_counter() - start - sum((stages or {}).values())


def backend_label(backend: Backend) -> str:
    """``"onnxruntime resnet50_trunc-....onnx [CPUExecutionProvider]"``: what encoded the features (provenance)."""
    details = backend.describe()
    where = ",".join(details.get("providers") or [backend.device])
    return f"{backend.kind} {Path(str(backend.artifact)).name} [{where}, {details.get('precision', 'fp32')}]"
