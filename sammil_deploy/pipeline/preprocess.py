"""Preprocess slides: tissue → patch grid → ``patches/<id>.h5`` + ``previews/<id>.png``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sammil_deploy.config import load_config
from sammil_deploy.errors import ConfigError
from sammil_deploy.patching import PatchConfig, make_patch_grid, require_patch_fits, write_coords_h5
from sammil_deploy.pipeline.batch import BatchSummary, SlideRecord, run_batch
from sammil_deploy.slide import open_slide
from sammil_deploy.tissue import TissueConfig, detect_tissue, with_tissue_preset

log = logging.getLogger(__name__)

PATCHES_DIR = "patches"
PREVIEWS_DIR = "previews"


@dataclass(frozen=True, slots=True)
class PreprocessConfig:
    """Tissue detection + patching for ``preprocess``.

    Attributes:
        tissue: Segmentation parameters (CLAM defaults).
        patch: Patch grid parameters (SAM-MIL: 512 px at level 0).
        mpp: Microns per level-0 pixel to use instead of the slide's metadata (or when it has none).
        preview_max_size_px: Long side of the preview PNG.
    """

    tissue: TissueConfig = field(default_factory=TissueConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    mpp: float | None = None
    preview_max_size_px: int = 1024

    def __post_init__(self) -> None:
        if self.mpp is not None and self.mpp <= 0:
            raise ConfigError(f"mpp must be > 0, got {self.mpp}")
        if self.preview_max_size_px < 16:
            raise ConfigError(f"preview_max_size_px must be >= 16, got {self.preview_max_size_px}")


def load_preprocess_config(
    path: Path | None = None, *, preset: str | None = None, overrides: Mapping[str, Any] | None = None
) -> PreprocessConfig:
    """Defaults < tissue preset < TOML file < overrides (dotted keys such as ``"patch.patch_size_px"``).

    The TOML holds ``[tissue]`` and ``[patch]`` tables and top-level ``mpp``/``preview_max_size_px`` (inside a
    ``[preprocess]`` table if the file has one); a top-level ``preset = "tcga"`` names a CLAM preset, and
    ``preset`` here wins over it.

    Raises:
        ConfigError: On an unreadable file, unknown key, unknown preset or invalid value.
    """
    return load_config(
        PreprocessConfig, path, table="preprocess", prepare=lambda data: with_tissue_preset(data, preset),
        overrides=overrides,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PreprocessResult:
    """What ``preprocess_slide`` wrote and found."""

    slide_id: str
    coords_path: Path
    preview_path: Path
    n_patches: int
    n_contours: int
    n_holes: int
    tissue_area_level0_px2: float
    seg_level: int
    patch_level: int
    patch_size_level0_px: int
    mpp: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {
            "slide_id": self.slide_id,
            "coords_path": str(self.coords_path),
            "preview_path": str(self.preview_path),
            "n_patches": self.n_patches,
            "n_contours": self.n_contours,
            "n_holes": self.n_holes,
            "tissue_area_level0_px2": self.tissue_area_level0_px2,
            "seg_level": self.seg_level,
            "patch_level": self.patch_level,
            "patch_size_level0_px": self.patch_size_level0_px,
            "mpp": self.mpp,
            "seconds": round(self.seconds, 3),
        }


def coords_path_for(out_dir: Path, slide: Path) -> Path:
    """``<out>/patches/<slide_id>.h5`` (the final output of a slide: its presence means done)."""
    return Path(out_dir) / PATCHES_DIR / f"{Path(slide).stem}.h5"


def preview_path_for(out_dir: Path, slide: Path) -> Path:
    """``<out>/previews/<slide_id>.png``."""
    return Path(out_dir) / PREVIEWS_DIR / f"{Path(slide).stem}.png"


def preprocess_slide(path: Path, cfg: PreprocessConfig, out_dir: Path) -> PreprocessResult:
    """Detect tissue, place patches, write the coords HDF5 and the preview PNG of one slide.

    Nothing is written unless every step succeeds; the coords file is written last (it marks the slide done).

    Raises:
        SlideError: If the slide is missing or unreadable (UnsupportedSlideError for non-slides).
        ConfigError: On an impossible level / mpp combination.
        TissueError: If no tissue is found.
        PatchingError: If the slide is smaller than one patch or no patch fits the tissue.
    """
    from sammil_deploy.viz.preview import render_preview, write_png

    start = time.perf_counter()
    path = Path(path)
    with open_slide(path, mpp=cfg.mpp) as reader:
        info = reader.info
        require_patch_fits(info, cfg.patch)
        tissue = detect_tissue(reader, cfg.tissue)
        grid = make_patch_grid(info, tissue, cfg.patch)
        preview = render_preview(reader, tissue, grid, max_size_px=cfg.preview_max_size_px)

    coords_path, preview_path = coords_path_for(out_dir, path), preview_path_for(out_dir, path)
    coords_path.parent.mkdir(parents=True, exist_ok=True)
    preview_path.parent.mkdir(parents=True, exist_ok=True)
    write_png(preview_path, preview)
    try:
        write_coords_h5(
            coords_path,
            grid,
            info,
            {"tissue": cfg.tissue, "patch": cfg.patch},
            extra_attrs={
                "seg_level": tissue.seg_level,
                "n_contours": tissue.n_contours,
                "tissue_area_level0_px2": tissue.tissue_area_level0_px2,
                "tissue_bbox_level0": list(tissue.bbox_level0),
            },
        )
    except BaseException:
        preview_path.unlink(missing_ok=True)
        raise
    return PreprocessResult(
        slide_id=info.slide_id,
        coords_path=coords_path,
        preview_path=preview_path,
        n_patches=len(grid),
        n_contours=tissue.n_contours,
        n_holes=tissue.n_holes,
        tissue_area_level0_px2=tissue.tissue_area_level0_px2,
        seg_level=tissue.seg_level,
        patch_level=grid.patch_level,
        patch_size_level0_px=grid.patch_size_level0_px,
        mpp=info.mpp,
        seconds=time.perf_counter() - start,
    )


def preprocess_slides(
    paths: Iterable[Path],
    cfg: PreprocessConfig,
    out_dir: Path,
    *,
    continue_on_error: bool = True,
    overwrite: bool = False,
    progress: Callable[[SlideRecord[PreprocessResult]], None] | None = None,
) -> BatchSummary[PreprocessResult]:
    """``preprocess_slide`` over many slides; slides whose coords file exists are skipped unless ``overwrite``.

    Args:
        paths: Slide files.
        cfg: Shared config.
        out_dir: Output root (``patches/`` and ``previews/`` are created inside).
        continue_on_error: Record a failing slide and go on (else re-raise its SammilError).
        overwrite: Redo slides that already have a coords file.
        progress: Called with each slide's record as it finishes.

    Returns:
        Per-slide records; ``summary.all_succeeded`` is False if any slide failed.

    Raises:
        ConfigError: If two slides have the same id (``a.svs`` and ``a.tif``).
    """
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    clashes = sorted({str(p) for p in paths if stems.count(p.stem) > 1})
    if clashes:
        raise ConfigError(f"slides share a slide id (file name without extension), so outputs would clash: {clashes}")
    return run_batch(
        paths,
        lambda p: preprocess_slide(p, cfg, out_dir),
        lambda p: coords_path_for(out_dir, p),
        overwrite=overwrite,
        continue_on_error=continue_on_error,
        on_record=progress,
    )
