"""Add SAM spatial context to features extracted elsewhere (CLAM ``.h5`` / ``.pt``), without re-extracting.

The paper offers "SAM-guided feature files from previously extracted feature files"; this is that path. The
SAM image is framed exactly as ``extract`` and ``infer`` frame it, by the union box of the tissue contours: the
tissue is detected again (cheap, on a low-resolution level) with the tissue settings the feature file recorded
(our files), else the ones given (``--preset`` for CLAM files, which record none). Framing by the patch
footprints instead would give other segments, so a model trained on upgraded files would see other group tokens
than ``infer`` feeds it. The patches are then assigned to the masks they touch and the group tokens are the
means of the stored features (Eq. 3), exactly as ``extract`` computes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from sammil_deploy.config import to_dict
from sammil_deploy.errors import ConfigError, FeatureStoreError, SlideError
from sammil_deploy.features.bag import FeatureBag
from sammil_deploy.pipeline.batch import BatchSummary, SlideRecord, run_batch
from sammil_deploy.pipeline.stages import segment_patches, spatial_context
from sammil_deploy.slide import SLIDE_SUFFIXES, open_slide

if TYPE_CHECKING:
    from sammil_deploy.segment import SegmentConfig, Segmenter
    from sammil_deploy.tissue import TissueConfig

log = logging.getLogger(__name__)

Layout = Literal["sammil", "official"]
FEATURE_SUFFIXES = (".h5", ".pt")


def patch_extent_level0(coords_level0_xy: np.ndarray, patch_size_level0_px: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) level-0 union box of all patch footprints."""
    x0, y0 = coords_level0_xy.min(axis=0)
    x1, y1 = coords_level0_xy.max(axis=0) + patch_size_level0_px
    return int(x0), int(y0), int(x1), int(y1)


def recorded_tissue_config(bag: FeatureBag, default: TissueConfig) -> tuple[TissueConfig, str]:
    """The tissue settings ``bag``'s extraction recorded, else ``default``; and which of the two it is.

    Raises:
        ConfigError: If the recorded settings are not valid tissue settings of this version.
    """
    from sammil_deploy.config import from_mapping
    from sammil_deploy.tissue import TissueConfig

    extract_config = bag.attrs.get("extract_config")
    recorded = extract_config.get("tissue") if isinstance(extract_config, dict) else None
    if isinstance(recorded, dict):
        return from_mapping(TissueConfig, recorded, section="tissue"), "recorded"
    return default, "given"


def add_context(
    bag: FeatureBag,
    slide_path: Path,
    cfg: SegmentConfig,
    *,
    tissue: TissueConfig | None = None,
    mpp: float | None = None,
    segmenter: Segmenter | None = None,
) -> FeatureBag:
    """Return ``bag`` with segments, memberships and group tokens computed from its slide.

    Args:
        bag: Patch coords and features (any spatial context it holds is replaced).
        slide_path: The bag's slide.
        cfg: Segmenter and membership mode.
        tissue: Tissue settings for files that recorded none (CLAM's); CLAM's defaults when None.
        mpp: Microns per level-0 pixel, for slides without metadata.
        segmenter: A segmenter to reuse (``segment.create_segmenter``); built from ``cfg`` when None.

    Raises:
        FeatureStoreError: If the bag is empty or its coords fall outside the slide.
        SlideError, TissueError, SegmentationError: If the slide cannot be read, has no tissue, or cannot be
            segmented.
    """
    from sammil_deploy.tissue import TissueConfig, detect_tissue

    if bag.n_patches == 0:
        raise FeatureStoreError(f"{bag.slide_id}: the feature file has no patch rows")
    tissue_cfg, source = recorded_tissue_config(bag, tissue or TissueConfig())
    with open_slide(slide_path, mpp=mpp) as reader:
        width, height = reader.info.dimensions_wh
        extent = patch_extent_level0(bag.coords_level0_xy, bag.patch_size_level0_px)
        if extent[0] < 0 or extent[1] < 0 or extent[0] >= width or extent[1] >= height:
            raise FeatureStoreError(
                f"{bag.slide_id}: patch coords {extent[:2]} lie outside {slide_path.name} ({width}x{height} px); "
                "is this the right slide for the feature file?"
            )
        frame = detect_tissue(reader, tissue_cfg).bbox_level0  # the framing rule of extract and infer
        if not _contains(frame, extent):
            log.warning(
                "%s: patches reach %s, beyond the tissue box %s of the %s tissue settings; patches outside it join "
                "no segment (were the patches made with other settings? pass the same --preset)",
                bag.slide_id, extent, frame, source,
            )  # fmt: skip
        _, _, assignment = segment_patches(
            reader, frame, bag.coords_level0_xy, bag.patch_size_level0_px, cfg, segmenter=segmenter
        )
    context = spatial_context(bag.features, assignment)
    attrs = {
        **bag.attrs,
        "context_added_from": slide_path.name,
        "segmenter_config": to_dict(cfg),
        "context_tissue_config": {**to_dict(tissue_cfg), "source": source},
    }
    return FeatureBag(
        slide_id=bag.slide_id, coords_level0_xy=bag.coords_level0_xy, features=bag.features,
        patch_size_level0_px=bag.patch_size_level0_px, patch_level=bag.patch_level, context=context, attrs=attrs,
    )  # fmt: skip


def _contains(outer: tuple[int, int, int, int], inner: tuple[int, int, int, int]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def find_slide_for(slide_id: str, slides_dir: Path) -> Path:
    """The slide file in ``slides_dir`` whose stem is ``slide_id`` (any OpenSlide suffix)."""
    for suffix in SLIDE_SUFFIXES:
        for candidate in (slides_dir / f"{slide_id}{suffix}", slides_dir / f"{slide_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    raise SlideError(f"{slide_id}: no slide named {slide_id}.* in {slides_dir}; pass the folder holding the slides")


def read_feature_file(
    path: Path, *, coords_dir: Path | None = None, patch_size_level0_px: int | None = None
) -> FeatureBag:
    """Read a CLAM/official/our ``.h5``, or a CLAM ``.pt`` with its patch coords ``<coords_dir>/<stem>.h5``."""
    from sammil_deploy.features.store import read_bag, read_clam_pt

    if path.suffix == ".pt":
        if coords_dir is None:
            raise FeatureStoreError(f"{path.name}: a .pt feature file needs --coords-dir with the patch coords .h5")
        return read_clam_pt(path, coords_dir / f"{path.stem}.h5", patch_size_level0_px=patch_size_level0_px)
    return read_bag(path, with_context=False)


def output_path_for(out_dir: Path, feature_file: Path) -> Path:
    """``<out>/<stem>.h5``, whatever the input suffix."""
    return out_dir / f"{feature_file.stem}.h5"


def add_context_files(
    feature_files: Sequence[Path],
    slides_dir: Path,
    out_dir: Path,
    cfg: SegmentConfig,
    *,
    tissue: TissueConfig | None = None,
    layout: Layout = "sammil",
    coords_dir: Path | None = None,
    mpp: float | None = None,
    overwrite: bool = False,
    continue_on_error: bool = True,
    on_record: Callable[[SlideRecord[FeatureBag]], None] | None = None,
) -> BatchSummary[FeatureBag]:
    """Upgrade many feature files; resumable (existing outputs are skipped), failures recorded.

    Args:
        feature_files: CLAM ``.h5`` / ``.pt`` files (or our own / official files: their context is recomputed).
        slides_dir: Folder with the slides, matched by file stem.
        out_dir: Where ``<stem>.h5`` is written (``layout`` chooses ours or the official one).
        cfg: Segmenter (SAM with a checkpoint, or the fallback) and membership mode.
        tissue: Tissue settings that frame the SAM image for files that recorded none (CLAM's files): the ones
            the patches were made with (e.g. ``tissue_preset("bwh_biopsy")``); CLAM's defaults when None.
        layout: ``sammil`` (schema v1) or ``official`` (group rows appended, ``is_group_feat``, ``relative_area``).
        coords_dir: Folder of CLAM patch ``.h5`` files, for ``.pt`` inputs.
        mpp: Microns per pixel for slides without metadata.
        overwrite: Redo files whose output exists.
        continue_on_error: Record a failing file and go on.
        on_record: Called after each file (progress display).

    Raises:
        ConfigError: ``layout`` is neither ``sammil`` nor ``official`` (before any file is read).
    """
    from sammil_deploy.features.store import write_bag, write_official
    from sammil_deploy.segment import create_segmenter

    if layout not in ("sammil", "official"):
        raise ConfigError(f"--layout must be 'sammil' or 'official', got {layout!r}")
    out_dir = Path(out_dir)
    write = write_official if layout == "official" else write_bag
    segmenter = create_segmenter(cfg)  # loads SAM once for every file

    def process(path: Path) -> FeatureBag:
        bag = read_feature_file(path, coords_dir=coords_dir)
        slide = find_slide_for(bag.slide_id, Path(slides_dir))
        upgraded = add_context(bag, slide, cfg, tissue=tissue, mpp=mpp, segmenter=segmenter)
        write(output_path_for(out_dir, path), upgraded)
        return upgraded

    return run_batch(
        feature_files, process, lambda p: output_path_for(out_dir, p),
        overwrite=overwrite, continue_on_error=continue_on_error, on_record=on_record,
    )  # fmt: skip


def find_feature_files(path: Path) -> list[Path]:
    """One feature file, or every ``.h5`` / ``.pt`` directly inside a folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FeatureStoreError(f"{path}: no such feature file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix in FEATURE_SUFFIXES and p.is_file())
    if not files:
        raise FeatureStoreError(f"{path}: folder holds no .h5 or .pt feature file")
    return files
