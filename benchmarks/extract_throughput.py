"""Extraction throughput (patches/s): the full path with 0/1/2 reader workers vs the encoder alone.

"model only" runs :func:`encode_batch` on uint8 batches already in memory (normalisation + forward, no
reading, no resize); "extract, k workers" runs :func:`extract_features` over the same number of patches read
from the slide. The ratio shows what reading and resizing cost on this machine. Random weights (speed only).

    .venv/bin/python benchmarks/extract_throughput.py [--slide S.svs] [--patches 64] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# The script's folder is on sys.path when run as a script, so the sibling benchmark's helpers import directly.
from read_throughput import grid_coords_level0_xy, synthetic_slide
from rich.console import Console
from rich.table import Table

from sammil_deploy.features.extract import (
    ExtractConfig,
    build_encoder,
    encode_batch,
    extract_features,
    prepare_encoder,
    resolve_device,
)
from sammil_deploy.slide import open_slide


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only_s(cfg: ExtractConfig, n_patches: int, repeats: int) -> float:
    """Median seconds to encode ``n_patches`` pre-loaded uint8 patches in ``cfg.batch_size`` batches."""
    device = resolve_device(cfg.device)
    encoder = prepare_encoder(build_encoder(cfg), device)
    batch = torch.randint(0, 256, (cfg.batch_size, 3, encoder.input_size_px, encoder.input_size_px), dtype=torch.uint8)
    if device.type == "cuda":
        batch = batch.pin_memory()
    n_batches = -(-n_patches // cfg.batch_size)
    encode_batch(encoder, batch, device, cfg.precision)  # warm-up (allocator, cuDNN autotune)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n_batches):
            encode_batch(encoder, batch, device, cfg.precision)
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * n_patches / (n_batches * cfg.batch_size)


def extract_s(slide: Path, coords: np.ndarray, patch_px: int, cfg: ExtractConfig, repeats: int) -> float:
    """Median seconds of :func:`extract_features` over ``coords`` (worker start-up included, as in real runs)."""
    encoder = build_encoder(cfg)
    extract_features(slide, coords[: cfg.batch_size], patch_px, encoder, cfg)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        extract_features(slide, coords, patch_px, encoder, cfg)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    """Parse arguments, time each mode, print the table (and write JSON with --out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, help="slide to read (default: a synthetic slide)")
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--patch-px", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the main process")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = ExtractConfig(allow_random=True, batch_size=args.batch_size, device=args.device, precision=args.precision)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        slide = args.slide or synthetic_slide(Path(tmp))
        with open_slide(slide) as reader:
            dims = reader.info.dimensions_wh
        coords = grid_coords_level0_xy(dims, args.patch_px, args.patches)
        rows = [{"mode": "model only (pre-loaded)", "seconds": model_only_s(base, args.patches, args.repeats)}]
        for workers in args.workers:
            cfg = ExtractConfig(
                allow_random=True,
                batch_size=args.batch_size,
                num_workers=workers,
                device=args.device,
                precision=args.precision,
            )
            rows.append(
                {
                    "mode": f"extract, {workers} workers",
                    "seconds": extract_s(slide, coords, args.patch_px, cfg, args.repeats),
                }
            )
    for r in rows:
        r["patches_per_s"] = args.patches / r["seconds"]
        r["vs_model_only"] = r["patches_per_s"] / rows[0]["patches_per_s"]

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    table = Table(
        "mode",
        "seconds",
        "patches/s",
        "vs model only",
        title=f"{Path(slide).name} {dims[0]}x{dims[1]}, {args.patches} patches of {args.patch_px} px -> 224, "
        f"batch {args.batch_size}, {device} ({gpu or f'{platform.machine()} {os.cpu_count()} CPUs'}), "
        f"{args.precision}, {torch.get_num_threads()} torch threads, load avg {os.getloadavg()[0]:.1f}",
    )
    for r in rows:
        table.add_row(r["mode"], f"{r['seconds']:.2f}", f"{r['patches_per_s']:.1f}", f"{r['vs_model_only']:.2f}x")
    Console().print(table)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "slide": str(slide),
                    "load_avg_1min": os.getloadavg()[0],
                    "device": str(device),
                    "gpu": gpu,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
