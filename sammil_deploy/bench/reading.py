"""Reading: OpenSlide's per-patch floor vs our reader feeding a null model, per core and on all cores.

Reading is what no model backend can speed up, so it bounds extraction. Two kinds of rows on the same patches
(the slide's real tissue patches: CLAM tissue detection with the ``bwh_biopsy`` preset + patch grid, the first
``regions`` of them in tile read order) and the same worker counts:

- ``openslide``: the per-patch floor, OpenSlide ``read_region`` of each 512-px patch (RGBA → RGB on white) in N
  reader processes, no resize, each patch copied once into the shared-memory batch the main process receives
  (the least any reader must do to hand a patch over; ~0.1 ms of a ~6 ms read);
- ``ours``: the real encoding engine (``features.engine.encode_patches``: reader ``auto``, tile read order,
  per-worker runs, CLAM's PIL resize to the encoder input in the workers, NHWC uint8 batches) feeding a
  :class:`NullBackend` that validates each batch and returns zeros, so the row is everything but the model.

Both kinds read through the same :class:`~sammil_deploy.patching.reader_pool.ReaderPool`, started once before
timing, as ``extract``/``infer`` start it once per run and keep it for every slide (0 workers: read in the
benchmark process). Only the reader and the resize differ between the rows.

The slide file is in the page cache after the warm-up: this measures decode + copy + resize, not disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.bench.bench_setup import BenchSetup
from sammil_deploy.bench.report import BenchmarkResult
from sammil_deploy.bench.suites import ReadingBench
from sammil_deploy.bench.timing import time_interleaved
from sammil_deploy.runtime.base import ArrayLike, Backend, TensorSpec

if TYPE_CHECKING:
    pass

COMPONENT = "reading"


TISSUE_PRESET = "bwh_biopsy"  # CLAM's preset for small tissue: benchmark slides are small


def tissue_coords_level0_xy(slide: Path, patch_px: int, n: int | None = None) -> np.ndarray:
    """Top-left corners of the slide's tissue patches (CLAM ``bwh_biopsy``, ``patch_px`` at level 0), (M, 2) int64.

    With ``n`` the list is put in tile read order (strips, row by row: a contiguous block of tissue, as one reader
    worker sees it) and cut or repeated to exactly ``n`` rows.

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
    from sammil_deploy.features.engine import tile_read_order

    coords = np.asarray(grid.coords_level0_xy, dtype=np.int64)
    if n is None:
        return coords
    return np.resize(
        coords[tile_read_order(coords)], (n, 2)
    )  # repeats the grid when the slide has fewer than n patches


def synthetic_benchmark_slide(folder: Path, size_px: int, seed: int = 0) -> Path:
    """A tumour-bearing synthetic pyramidal slide ``size_px`` wide (3/4 as high, 0.25 mpp), reused if present."""
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    path = Path(folder) / f"bench_slide_{size_px}_{seed}.svs"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = SyntheticSlideSpec(width_px=size_px, height_px=size_px * 3 // 4, seed=seed, tumour=True)
        write_synthetic_slide(path, spec)
    return path


def cached_pipeline_slide(width_px: int, seed: int = 0) -> Path:
    """A real-sized synthetic slide: ``make-demo-data --size-px width_px --seed seed``'s first slide, cached.

    Tumour-bearing, ``width_px`` x 0.8 of it at 0.25 mpp (40000 px: ~2,200 tissue patches of 512 px). Written
    once into ``$SAMMIL_DEPLOY_CACHE`` (or ``~/.cache/sammil-deploy``) ``/bench_slides`` and reused by later
    runs (a 40000 px slide takes about a minute to write on two cores).
    """
    from sammil_deploy.features.encoding import cache_root
    from sammil_deploy.slide.cohort import plan_demo_cohort
    from sammil_deploy.slide.synthetic import write_synthetic_slide

    path = cache_root() / "bench_slides" / f"pipeline_slide_{width_px}_{seed}.svs"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _, _, spec = next(p for p in plan_demo_cohort(2, seed=seed, size_px=width_px) if p[1] == 1)
        write_synthetic_slide(path, spec)
    return path


class NullBackend(Backend):
    """A feature backend with the encoder's contract that computes nothing: validated batches in, zeros out."""

    kind = "null"

    def __init__(self, size_px: int, dim: int = 1024) -> None:
        super().__init__(device="cpu", artifact="null model")
        self._spec_in = (TensorSpec("patches", "uint8", ("batch", size_px, size_px, 3)),)
        self._spec_out = (TensorSpec("features", "float32", ("batch", dim)),)

    def _load(self) -> None:
        self._input_spec, self._output_spec = self._spec_in, self._spec_out

    def _infer(self, inputs: dict[str, ArrayLike]) -> dict[str, np.ndarray]:
        n = int(inputs["patches"].shape[0])
        return {"features": np.zeros((n, int(self._spec_out[0].shape[1])), np.float32)}


def bench_reading(cfg: ReadingBench, ctx: BenchSetup) -> list[BenchmarkResult]:
    """OpenSlide floor and our reader + null model per worker count (interleaved passes).

    The reference is OpenSlide with the smallest worker count.
    """
    import contextlib

    from sammil_deploy.features.engine import encode_patches, tile_read_order
    from sammil_deploy.patching.reader_pool import ReaderPool, ReadJob, read_batches_inline

    slide = ctx.pipeline_slide
    coords = tissue_coords_level0_xy(slide, cfg.patch_px, cfg.regions)
    order = tile_read_order(coords)
    size_px = cfg.resize_px or cfg.patch_px
    what = f"{cfg.regions} patches of {cfg.patch_px} px"
    floor_job = ReadJob(str(slide), "openslide", None, 0, cfg.patch_px, cfg.patch_px, "bicubic")
    null = NullBackend(size_px)
    calls: dict[str, Any] = {}
    with contextlib.ExitStack() as pools:
        for workers in cfg.workers:
            pool = pools.enter_context(ReaderPool(workers)) if workers > 0 else None

            def floor(pool: ReaderPool | None = pool) -> None:
                batches = read_batches_inline if pool is None else pool.batches
                for _batch in batches(floor_job, coords, order, cfg.batch_size):
                    pass

            calls[f"openslide-{workers}"] = floor
            calls[f"ours-{workers}"] = lambda workers=workers, pool=pool: encode_patches(
                slide, coords, null, patch_level=0, read_size_px=cfg.patch_px, input_size_px=size_px,
                interpolation="bicubic", batch_size=cfg.batch_size, num_workers=workers, pool=pool,
            )  # fmt: skip
        ctx.progress(f"{COMPONENT}: timing {what}, OpenSlide floor vs our reader, {list(cfg.workers)} workers")
        stats = time_interleaved(calls, cfg.timing or ctx.timing)
    ours_label = f"ours ({auto_reader_name(slide)} + resize {cfg.patch_px}->{size_px} + null model)"
    reference = min(cfg.workers)
    rows = []
    for kind in ("openslide", "ours"):
        for w in cfg.workers:
            label = "openslide read_region" if kind == "openslide" else ours_label
            rows.append(BenchmarkResult(
                COMPONENT, f"{label}, {w} worker{'s' if w != 1 else ''}", "-", what, cfg.regions, "regions",
                timing=stats[f"{kind}-{w}"], device="cpu", reference=kind == "openslide" and w == reference,
                notes={
                    "workers": w,
                    "unique_regions": int(len(np.unique(coords, axis=0))),
                    "batch_size": cfg.batch_size,
                    "slide": slide.name,
                    "timed_call": "one pass over all patches; reader processes started once before timing"
                    + (", patches copied to shared memory" if kind == "openslide" else ", null features stored"),
                },
            ))  # fmt: skip
    return rows


def auto_reader_name(path: Path) -> str:
    """The reader ``open_slide(path)`` (``reader="auto"``) picks, e.g. ``tiled-jpeg``."""
    from sammil_deploy.slide import open_slide

    with open_slide(path) as reader:
        return reader.name
