"""A small synthetic cohort for the demo: tumour (label 1) and tumour-free (label 0) slides plus ``labels.csv``."""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sammil_deploy.errors import ConfigError
from sammil_deploy.io_atomic import atomic_path
from sammil_deploy.slide.synthetic import SyntheticSlideSpec, SyntheticTruth, write_synthetic_slide

log = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"
# 9216 x 7373 px at 0.25 mpp: ~90-140 level-0 patches of 512 px in tissue and a tumour focus of ~15 patches,
# small enough that preprocessing, ResNet50 features on CPU and training of 12 slides take a few minutes.
DEFAULT_SIZE_PX = 9216
DEFAULT_N_SLIDES = 12


@dataclass(frozen=True, slots=True)
class DemoSlide:
    """One written slide of the cohort."""

    slide_id: str
    path: Path
    label: int
    spec: SyntheticSlideSpec
    truth: SyntheticTruth
    seconds: float

    @property
    def size_bytes(self) -> int:
        """File size on disk."""
        return self.path.stat().st_size


@dataclass(frozen=True, slots=True)
class DemoCohort:
    """The written cohort: slides in ``slide_id`` order and the labels CSV (``slide_id,label``)."""

    out_dir: Path
    slides: tuple[DemoSlide, ...]
    labels_csv: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (what ``make-demo-data --json`` prints): folder, labels CSV, one row per slide."""
        rows = [
            {
                "slide_id": s.slide_id,
                "path": str(s.path),
                "label": s.label,
                "width_px": s.spec.width_px,
                "height_px": s.spec.height_px,
                "levels": len(s.spec.level_downsamples),
                "mpp": s.spec.mpp,
                "megabytes": round(s.size_bytes / 1e6, 2),
                "seconds": round(s.seconds, 2),
            }
            for s in self.slides
        ]
        return {"out": str(self.out_dir), "labels_csv": str(self.labels_csv), "slides": rows}


def plan_demo_cohort(
    n_slides: int = DEFAULT_N_SLIDES, *, seed: int = 0, size_px: int = DEFAULT_SIZE_PX, mpp: float = 0.25
) -> list[tuple[str, int, SyntheticSlideSpec]]:
    """The (slide_id, label, spec) of each slide, without writing anything.

    Half of the slides (rounded down) carry tumour (label 1), shuffled deterministically by ``seed``. Slides are
    ``size_px`` wide and 0.8 as high, with 1..3 tissue pieces.

    Raises:
        ConfigError: If ``n_slides < 2`` or the size is too small to hold tissue and a tumour focus.
    """
    if n_slides < 2:
        raise ConfigError(f"demo cohort needs --n-slides >= 2 (one slide per class), got {n_slides}")
    if size_px < 1024:
        raise ConfigError(f"demo cohort --size-px must be >= 1024 to hold tissue and tumour, got {size_px}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0407]))
    labels = np.zeros(n_slides, np.int64)
    labels[: n_slides // 2] = 1
    labels = rng.permutation(labels)
    seeds = np.random.SeedSequence([seed, 0x51DE]).generate_state(n_slides)
    # A 300 um focus at the default size (scaled with the slide) covers ~10-20 level-0 patches of 512 px.
    tumour_radius_um = 300.0 * size_px / DEFAULT_SIZE_PX
    digits = max(3, len(str(n_slides - 1)))
    plan = []
    for i in range(n_slides):
        spec = SyntheticSlideSpec(
            width_px=size_px,
            height_px=max(16, round(size_px * 0.8)),
            mpp=mpp,
            seed=int(seeds[i]),
            n_tissue_pieces=int(rng.integers(1, 4)),
            n_lumens=int(rng.integers(2, 8)),
            tumour=bool(labels[i]),
            tumour_radius_um=tumour_radius_um,
        )
        plan.append((f"demo_{i:0{digits}d}", int(labels[i]), spec))
    return plan


def make_demo_cohort(
    out_dir: Path | str,
    *,
    n_slides: int = DEFAULT_N_SLIDES,
    seed: int = 0,
    size_px: int = DEFAULT_SIZE_PX,
    mpp: float = 0.25,
    workers: int | None = None,
    progress: Callable[[int, str, int, int], None] | None = None,
) -> DemoCohort:
    """Write a synthetic cohort: ``<slide_id>.svs`` files and ``labels.csv`` (header ``slide_id,label``).

    Every file is written atomically (``.partial`` then rename); the arguments are checked before anything is
    created. Existing files of the same names are replaced.

    Args:
        out_dir: Output folder (created if missing).
        n_slides: Number of slides (>= 2); half of them (rounded down) have tumour.
        seed: Seed of the whole cohort (labels order and every slide).
        size_px: Level-0 width of each slide (height is 0.8 of it).
        mpp: Microns per level-0 pixel.
        workers: Threads per slide for rendering and encoding.
        progress: Called as ``progress(slide_index, slide_id, tiles_done, tiles_total)``.

    Raises:
        ConfigError: On bad arguments (nothing is written).
        SlideError: If a slide cannot be written.
    """
    plan = plan_demo_cohort(n_slides, seed=seed, size_px=size_px, mpp=mpp)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    slides = []
    for index, (slide_id, label, spec) in enumerate(plan):
        start = time.perf_counter()

        def on_tiles(done: int, total: int, index: int = index, slide_id: str = slide_id) -> None:
            if progress is not None:
                progress(index, slide_id, done, total)

        path = out_dir / f"{slide_id}.svs"
        truth = write_synthetic_slide(path, spec, workers=workers, progress=on_tiles)
        seconds = time.perf_counter() - start
        log.info("wrote %s (label %d) in %.1f s", path.name, label, seconds)
        slides.append(DemoSlide(slide_id, path, label, spec, truth, seconds))
    labels_csv = out_dir / LABELS_CSV
    with atomic_path(labels_csv) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide_id", "label"])
        writer.writerows((s.slide_id, s.label) for s in slides)
    return DemoCohort(out_dir=out_dir, slides=tuple(slides), labels_csv=labels_csv)
