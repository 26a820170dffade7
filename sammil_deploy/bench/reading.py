"""The reading floor: level-0 regions read and decoded per second with N reader processes.

Reading is what no model backend can speed up, so it bounds extraction: the pipeline's patches/s as a
fraction of this floor says how much of the machine's reading capacity the pipeline uses. The regions are the
slide's real tissue patches (CLAM tissue detection with the ``bwh_biopsy`` preset + patch grid, repeated to
the requested count), read
through the library's own ``PatchDataset``/DataLoader path with persistent workers, so worker start-up is
paid in the warm-up pass and each timed call is one full pass. The slide file is in the page cache after the
warm-up: this measures decode + copy, not disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.bench.context import BenchContext
from sammil_deploy.bench.report import BenchmarkResult
from sammil_deploy.bench.suites import ReadingBench
from sammil_deploy.bench.timing import time_interleaved

if TYPE_CHECKING:
    import torch

COMPONENT = "reading"


TISSUE_PRESET = "bwh_biopsy"  # CLAM's preset for small tissue: benchmark slides are small


def tissue_coords_level0_xy(slide: Path, patch_px: int, n: int | None = None) -> np.ndarray:
    """Top-left corners of the slide's tissue patches (CLAM ``bwh_biopsy``, ``patch_px`` at level 0), (M, 2) int64.

    With ``n`` the list is cut or repeated (in order) to exactly ``n`` rows.

    Raises:
        TissueError, PatchingError: No tissue, or the slide is smaller than one patch.
    """
    from sammil_deploy.config import from_mapping
    from sammil_deploy.patching import PatchConfig, make_patch_grid
    from sammil_deploy.slide import open_slide
    from sammil_deploy.tissue import TissueConfig, detect_tissue, tissue_preset

    with open_slide(slide) as reader:
        tissue = detect_tissue(reader, from_mapping(TissueConfig, tissue_preset(TISSUE_PRESET)))
        grid = make_patch_grid(reader.info, tissue, PatchConfig(patch_size_px=patch_px))
    coords = np.asarray(grid.coords_level0_xy, dtype=np.int64)
    if n is None:
        return coords
    return np.resize(coords, (n, 2))  # repeats the grid when the slide has fewer than n patches


def synthetic_benchmark_slide(folder: Path, size_px: int, seed: int = 0) -> Path:
    """A tumour-bearing synthetic pyramidal slide ``size_px`` wide (3/4 as high, 0.25 mpp), reused if present."""
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    path = Path(folder) / f"bench_slide_{size_px}_{seed}.svs"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = SyntheticSlideSpec(width_px=size_px, height_px=size_px * 3 // 4, seed=seed, tumour=True)
        write_synthetic_slide(path, spec)
    return path


def _raw(patch: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(patch))


def _one_pass(loader: Any) -> None:
    for _batch in loader:
        pass


def bench_reading(cfg: ReadingBench, ctx: BenchContext) -> list[BenchmarkResult]:
    """Regions/s per worker count (interleaved passes); the smallest worker count is the reference."""
    from sammil_deploy.features.preprocess_ops import PatchTransform
    from sammil_deploy.patching.dataset import PatchDataset, make_patch_loader

    coords = tissue_coords_level0_xy(ctx.slide, cfg.patch_px, cfg.regions)
    transform = PatchTransform(cfg.resize_px, "bilinear") if cfg.resize_px else _raw
    what = f"{cfg.regions} regions of {cfg.patch_px} px" + (f" -> {cfg.resize_px} px" if cfg.resize_px else "")
    datasets, loaders = [], {}
    for workers in cfg.workers:
        dataset = PatchDataset(ctx.slide, coords, cfg.patch_px, 0, transform)
        datasets.append(dataset)
        loader = make_patch_loader(dataset, batch_size=cfg.batch_size, num_workers=workers, pin_memory=False)
        loaders[workers] = lambda loader=loader: _one_pass(loader)
    ctx.progress(f"{COMPONENT}: timing {what} with {list(cfg.workers)} workers")
    try:
        stats = time_interleaved({str(w): fn for w, fn in loaders.items()}, cfg.timing or ctx.timing)
    finally:
        for dataset in datasets:
            dataset.close()
        loaders.clear()  # persistent workers exit with their loaders
    reference = min(cfg.workers)
    return [
        BenchmarkResult(
            COMPONENT,
            f"openslide, {w} worker{'s' if w != 1 else ''}",
            "-",
            what,
            cfg.regions,
            "regions",
            timing=stats[str(w)],
            device="cpu",
            reference=w == reference,
            notes={
                "workers": w,
                "unique_regions": int(len(np.unique(coords, axis=0))),
                "batch_size": cfg.batch_size,
                "slide": ctx.slide.name,
                "timed_call": "one pass over all regions (persistent workers, started in the warm-up)",
            },
        )
        for w in cfg.workers
    ]
