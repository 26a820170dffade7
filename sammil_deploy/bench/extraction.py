"""Our patch-feature extraction vs the CLAM-style baseline, side by side: same slide, patches and encoder.

Both sides go from the slide file to an HDF5 of (N, 1024) features and coordinates; each timed call is one
whole extraction (DataLoader creation and worker start-up included, as every slide pays them). Ours is
:func:`sammil_deploy.features.extract.extract_features` (one slide handle per worker, uint8 batches, pinned
transfer, normalisation on the device) followed by one HDF5 write; the baseline is
:func:`.clam_baseline.clam_style_extract`. The encoder is one ResNet50-trunc instance with random weights
(speed only), shared by both. The first row (CLAM-style with CLAM's own worker choice) is the reference, and
each row's notes carry the features' agreement with it: equal to float rounding for patches inside the slide;
patches reaching past the slide border differ, because CLAM's ``convert("RGB")`` turns OpenSlide's transparent
padding black where our reader pads white.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sammil_deploy.bench.backends import parity
from sammil_deploy.bench.context import BenchContext
from sammil_deploy.bench.reading import tissue_coords_level0_xy
from sammil_deploy.bench.report import BenchmarkResult
from sammil_deploy.bench.suites import ExtractionBench
from sammil_deploy.bench.timing import time_interleaved

COMPONENT = "extraction"
PATCH_PX = 512


def write_features_h5(path: Path, features: np.ndarray, coords_level0_xy: np.ndarray) -> None:
    """One write of all rows (what our store does per slide), overwriting ``path``."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=np.asarray(coords_level0_xy, dtype=np.int32))


def _inside_slide(slide: Path, coords_level0_xy: np.ndarray) -> np.ndarray:
    """(N,) bool: the patch lies wholly inside the slide (no padding past its border)."""
    from sammil_deploy.slide import open_slide

    with open_slide(slide) as reader:
        width, height = reader.info.dimensions_wh
    return (coords_level0_xy[:, 0] + PATCH_PX <= width) & (coords_level0_xy[:, 1] + PATCH_PX <= height)


def bench_extraction(cfg: ExtractionBench, ctx: BenchContext) -> list[BenchmarkResult]:
    """Time the CLAM-style loop (per ``cfg.clam_workers``) and ours (per ``cfg.workers``), interleaved."""
    import h5py
    import torch

    from sammil_deploy.bench.clam_baseline import clam_num_workers, clam_style_extract, write_coords_h5
    from sammil_deploy.features.encoders import create_encoder
    from sammil_deploy.features.extract import ExtractConfig, extract_features

    folder = ctx.work_dir / "extraction"
    folder.mkdir(parents=True, exist_ok=True)
    coords = tissue_coords_level0_xy(ctx.slide, PATCH_PX, cfg.patches)
    inside = _inside_slide(ctx.slide, coords)
    coords_h5 = write_coords_h5(folder / "coords.h5", coords, PATCH_PX)
    torch.manual_seed(ctx.seed)
    encoder = create_encoder("resnet50_trunc", allow_random=True)
    device = torch.device(ctx.device)
    size = f"{cfg.patches} patches {PATCH_PX}->{encoder.input_size_px} px, batch {cfg.batch_size}"

    calls: dict[str, Any] = {}
    labels: dict[str, tuple[str, str, int, str]] = {}  # key -> backend label, precision, workers, output
    for requested in cfg.clam_workers:
        workers = clam_num_workers(ctx.device) if requested < 0 else requested
        key = f"clam-{requested}"
        out = folder / f"{key}.h5"
        calls[key] = lambda out=out, workers=workers: clam_style_extract(
            ctx.slide,
            coords_h5,
            encoder,
            out,
            batch_size=cfg.batch_size,
            num_workers=workers,
            device=device,
            interpolation=cfg.interpolation,
        )
        rule = " (CLAM's choice)" if requested < 0 else ""
        labels[key] = (f"clam-style, {workers} workers{rule}", "fp32", workers, str(out))
    for workers in cfg.workers:
        key = f"ours-{workers}"
        out = folder / f"{key}.h5"
        ours_cfg = ExtractConfig(
            allow_random=True,
            batch_size=cfg.batch_size,
            num_workers=workers,
            device=ctx.device,
            precision=cfg.precision,
            interpolation=cfg.interpolation,
        )

        def ours(out: Path = out, ours_cfg: ExtractConfig = ours_cfg) -> None:
            write_features_h5(out, extract_features(ctx.slide, coords, PATCH_PX, encoder, ours_cfg), coords)

        calls[key] = ours
        labels[key] = (f"ours, {workers} workers", cfg.precision, workers, str(out))

    ctx.progress(f"{COMPONENT}: timing {len(calls)} extraction loops on {cfg.patches} patches")
    stats = time_interleaved(calls, cfg.timing or ctx.timing, timer=ctx.timer)
    first = next(iter(calls))
    with h5py.File(labels[first][3], "r") as f:
        reference = {"features": f["features"][:]}
    rows = []
    for key in calls:
        backend, precision, workers, out = labels[key]
        with h5py.File(out, "r") as f:
            features = f["features"][:]
        rows.append(
            BenchmarkResult(
                COMPONENT,
                backend,
                precision,
                size,
                cfg.patches,
                "patches",
                timing=stats[key],
                device=ctx.device,
                reference=key == first,
                notes={
                    "workers": workers,
                    "batch_size": cfg.batch_size,
                    "interpolation": cfg.interpolation,
                    "features_vs_reference": parity(reference, {"features": features}),
                    # CLAM's read_region(...).convert("RGB") turns OpenSlide's transparent padding past the slide
                    # border black; our reader pads white, so only those patches may differ.
                    "features_vs_reference_inside_slide": parity(
                        {"features": reference["features"][inside]}, {"features": features[inside]}
                    ),
                    "patches_past_border": int((~inside).sum()),
                    "weights": "random (speed only)",
                    "timed_call": "slide file -> features HDF5, loader start-up included",
                },
            )
        )
    return rows
