"""Read throughput of 512 px level-0 regions (regions/s) with 0, 1 and 2 reader processes.

Uses the library's PatchDataset/DataLoader path exactly as extraction does, with either the raw read
(``--transform none``) or the read plus the PIL resize to 224 px done in the workers (``--transform resize``).
Without ``--slide`` a synthetic pyramidal TIFF is written to a temporary folder. The slide file sits in the page
cache after the warm-up pass, so this measures decode + copy, not disk.

    .venv/bin/python benchmarks/read_throughput.py [--slide S.svs] [--regions 256] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from sammil_deploy.features.preprocess_ops import PatchTransform
from sammil_deploy.patching.dataset import PatchDataset, make_patch_loader
from sammil_deploy.slide import open_slide


def _raw(patch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(patch))


def grid_coords_level0_xy(dimensions_wh: tuple[int, int], patch_px: int, n: int) -> np.ndarray:
    """Up to ``n`` non-overlapping patch corners covering the slide row by row, (n, 2) int64."""
    w, h = dimensions_wh
    xs, ys = np.arange(0, w - patch_px + 1, patch_px), np.arange(0, h - patch_px + 1, patch_px)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.int64)
    if len(grid) == 0:
        raise SystemExit(f"slide {w}x{h} is smaller than one {patch_px} px patch")
    return np.resize(grid, (n, 2))  # repeats the grid when the slide has fewer than n patches


def synthetic_slide(folder: Path) -> Path:
    """The library's default synthetic slide (6144x4608 px, 0.25 mpp, JPEG tiles, Aperio-style) in ``folder``."""
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    path = folder / "bench_slide.svs"
    write_synthetic_slide(path, SyntheticSlideSpec())
    return path


def time_passes(loader: torch.utils.data.DataLoader, repeats: int) -> tuple[float, list[float]]:
    """Seconds of the first pass (worker start-up included) and of ``repeats`` further passes."""
    passes = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for _batch in loader:
            pass
        passes.append(time.perf_counter() - start)
    return passes[0], passes[1:]


def main() -> None:
    """Parse arguments, time the passes, print the table (and write JSON with --out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, help="slide to read (default: a synthetic slide)")
    parser.add_argument("--regions", type=int, default=256, help="regions per pass")
    parser.add_argument("--patch-px", type=int, default=512, help="region side in level-0 pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the first")
    parser.add_argument("--transform", choices=("none", "resize"), default="none")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        slide = args.slide or synthetic_slide(Path(tmp))
        with open_slide(slide) as reader:
            dims = reader.info.dimensions_wh
        coords = grid_coords_level0_xy(dims, args.patch_px, args.regions)
        transform = PatchTransform(224, "bicubic") if args.transform == "resize" else _raw
        rows = []
        for workers in args.workers:
            dataset = PatchDataset(slide, coords, args.patch_px, 0, transform)
            loader = make_patch_loader(dataset, batch_size=args.batch_size, num_workers=workers, pin_memory=False)
            first_s, passes_s = time_passes(loader, args.repeats)
            dataset.close()
            del loader
            median_s = statistics.median(passes_s)
            rows.append(
                {
                    "workers": workers,
                    "regions": len(coords),
                    "first_pass_s": round(first_s, 3),
                    "median_pass_s": round(median_s, 3),
                    "regions_per_s": round(len(coords) / median_s, 1),
                }
            )

    base = rows[0]["regions_per_s"]
    table = Table(
        "workers",
        "regions",
        "first pass s",
        "median pass s",
        "regions/s",
        "vs row 1",
        title=f"{Path(slide).name} {dims[0]}x{dims[1]} px, {args.patch_px} px regions, transform={args.transform}, "
        f"{platform.machine()} {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}",
    )
    for r in rows:
        table.add_row(
            str(r["workers"]),
            str(r["regions"]),
            f"{r['first_pass_s']:.3f}",
            f"{r['median_pass_s']:.3f}",
            f"{r['regions_per_s']:.1f}",
            f"{r['regions_per_s'] / base:.2f}x",
        )
    Console().print(table)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "slide": str(slide),
                    "load_avg_1min": os.getloadavg()[0],
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
