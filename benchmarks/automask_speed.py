"""SAM automatic masks: upstream SamAutomaticMaskGenerator vs FastMaskGenerator, same model, same image, one run.

The image is the real slide's thumbnail at SAM-MIL's SAM-image size (long side 1024 px); the generator settings
are SAM-MIL's (32 points per side, 1 crop layer, 0.6/0.6 thresholds). Without ``--checkpoint`` the model is the
tiny random SAM (128 px encoder input) with its mask logits x100 and IoU head +0.6, so that the scores straddle
the thresholds as a trained SAM's do (unscaled random weights keep no mask, and upstream then crashes). With a
tiny encoder the timing is the generator's own work (decoding and post-processing), which is where the two
differ; with a real checkpoint the encoder adds the same cost to both sides except for crop batching.

Both generators run alternately ``--repeats`` times after one untimed warm-up each; the table gives the median
seconds, the ratio, the mask counts and the median matched IoU (each reference mask to its best fast mask).

    .venv/bin/python benchmarks/automask_speed.py [--slide S.svs] [--long-side 1024] [--checkpoint sam_vit_b.pth]
        [--device cpu] [--threads 1] [--repeats 3] [--batches 64 256] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from sammil_deploy.segment.automask import sam_segment
from sammil_deploy.segment.config import SegmentConfig
from sammil_deploy.segment.fast_automask import FastMaskGenerator
from sammil_deploy.segment.sam_model import build_sam
from sammil_deploy.segment.segmentation import Segmentation
from sammil_deploy.slide import open_slide

REAL_SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "CMU-1-Small-Region.svs"


def scaled_tiny_sam(device: str, seed: int = 0):
    """Random tiny SAM with logits x100 and IoU predictions +0.6 (scores around SAM-MIL's 0.6 thresholds)."""
    from sammil_deploy.bench.maskgen import calibrated_random_sam

    return calibrated_random_sam("tiny", seed).to(device)


def matched_iou_median(reference: Segmentation, fast: Segmentation) -> float:
    """Median over reference masks of the best IoU with a fast mask (computed on bounding-box overlaps)."""
    if reference.n_masks == 0 or fast.n_masks == 0:
        return float("nan")
    best = []
    areas_f = fast.areas_px
    for k in range(reference.n_masks):
        rx0, ry0, rx1, ry1 = reference.bbox_xyxy[k]
        top = 0.0
        for j in range(fast.n_masks):
            fx0, fy0, fx1, fy1 = fast.bbox_xyxy[j]
            x0, y0, x1, y1 = max(rx0, fx0), max(ry0, fy0), min(rx1, fx1), min(ry1, fy1)
            inter = 0
            if x1 > x0 and y1 > y0:
                a = reference.crops[k][y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
                b = fast.crops[j][y0 - fy0 : y1 - fy0, x0 - fx0 : x1 - fx0]
                inter = int(np.count_nonzero(a & b))
            top = max(top, inter / (reference.areas_px[k] + areas_f[j] - inter))
        best.append(top)
    return float(np.median(best))


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Seconds of each of ``repeats`` calls of ``fn`` (GPU work synchronised) and the last result."""
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, out


def main() -> None:
    """Parse arguments, run both generators alternately, print the table (and write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=REAL_SLIDE)
    parser.add_argument("--long-side", type=int, default=1024, help="SAM image long side, px")
    parser.add_argument("--checkpoint", type=Path, help="a real SAM .pth (default: scaled tiny random SAM)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="fast decoder batch sizes")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with open_slide(args.slide) as reader:
        image = reader.thumbnail(args.long_side)
    if args.checkpoint:
        sam, model = build_sam("auto", args.checkpoint, device=args.device), args.checkpoint.name
    else:
        sam, model = scaled_tiny_sam(args.device), "tiny (random, logits x100, IoU +0.6)"
    cfg = SegmentConfig(segmenter="sam", sam_model="tiny", device=args.device, points_per_side=args.points_per_side)

    runs = {"reference": lambda: sam_segment(image, cfg, sam=sam)}
    for batch in args.batches:
        generator = FastMaskGenerator.from_sam(sam, cfg, points_per_batch=batch)
        runs[f"fast (batch {batch})"] = lambda g=generator: g.generate(image)
    for fn in runs.values():  # warm-up (thread pools, allocator, first-call costs)
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, Segmentation] = {}
    for _ in range(args.repeats):  # alternate so load changes hit both sides alike
        for name, fn in runs.items():
            (seconds,), outputs[name] = timed(fn, 1)
            times[name].append(seconds)

    ref_s = statistics.median(times["reference"])
    rows = []
    for name in runs:
        seconds = statistics.median(times[name])
        rows.append(
            {
                "generator": name,
                "median_s": seconds,
                "all_s": times[name],
                "speedup_vs_reference": ref_s / seconds,
                "masks": outputs[name].n_masks,
                "matched_iou_median": 1.0
                if name == "reference"
                else matched_iou_median(outputs["reference"], outputs[name]),
            }
        )
    hardware = f"{platform.machine()} {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    if args.device.startswith("cuda"):
        hardware = torch.cuda.get_device_name()
    table = Table(
        title=f"SAM automatic masks, {image.shape[1]}x{image.shape[0]} px thumbnail, {model}, "
        f"{args.points_per_side} pts/side, 1 crop layer, {args.device} ({hardware})"
    )
    for col in ("generator", "median s", "speed-up", "masks", "matched IoU (median)"):
        table.add_column(col, justify="left" if col == "generator" else "right")
    for r in rows:
        table.add_row(
            r["generator"],
            f"{r['median_s']:.2f}",
            f"{r['speedup_vs_reference']:.1f}x",
            str(r["masks"]),
            f"{r['matched_iou_median']:.3f}",
        )
    Console().print(table)
    if args.out:
        payload = {"image_hw": list(image.shape[:2]), "model": model, "hardware": hardware, "args": vars(args)}
        payload["args"] = {k: str(v) for k, v in payload["args"].items()}
        args.out.write_text(json.dumps({**payload, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
