"""Resident memory and open file handles over a long cohort: does a run stay flat?

Writes ``--slides`` small synthetic slides (default 30, 1536x1280 px at 0.5 mpp), a demo bundle (random
ResNet50-trunc encoder, small 1024-d MIL head, fallback segmenter), then runs ``infer`` over the cohort in this
process with the networks loaded once, sampling after every slide the process's resident memory (VmRSS), its
peak (VmHWM) and its open file descriptors. Growth per slide is the least-squares slope of RSS over the slides
after ``--warmup`` (the first slides fill allocator pools and caches); a leak shows as a slope well above the
noise (a few hundred KiB per slide on glibc).

    .venv/bin/python benchmarks/cohort_memory.py [--slides 30] [--backend torch|onnxruntime] [--num-workers 1]
        [--work-dir DIR] [--out benchmarks/results/cohort_memory_2core_cpu.json] [--machine NAME]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sammil_deploy.io_atomic import write_json


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _bundle(work: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from sammil_deploy.bundle import make_bundle
    from sammil_deploy.features.encoders import create_encoder
    from sammil_deploy.mil.checkpoint import make_meta, save_checkpoint
    from sammil_deploy.mil.config import ModelConfig
    from sammil_deploy.mil.model import build_model
    from sammil_deploy.pipeline.extract import load_extract_config

    out = work / "bundle"
    if out.is_dir():
        return out
    torch.manual_seed(0)
    weights = work / "resnet50_trunc_random.safetensors"
    encoder = create_encoder("resnet50_trunc", allow_random=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(weights))
    cfg = ModelConfig(in_dim=1024, embed_dim=64, attn_dim=32)
    meta = make_meta(cfg, class_names=("normal", "tumor"), group_tokens=True, feature_extractor="resnet50_trunc")
    ckpt = save_checkpoint(work / "ckpt" / "fold0", build_model(cfg), meta)
    extract_cfg = load_extract_config(
        preset="bwh_biopsy", overrides={"features.weights": weights, "segment.segmenter": "fallback"}
    )
    make_bundle(out, ckpt, None, extract_cfg)
    return out


def _slides(work: Path, n: int) -> list[Path]:
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    folder = work / "slides"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(100, 100 + n):
        path = folder / f"s{seed}.svs"
        if not path.is_file():
            spec = SyntheticSlideSpec(
                width_px=1536, height_px=1280, mpp=0.5, seed=seed, n_lumens=0, tumour=seed % 2 == 0
            )
            write_synthetic_slide(path, spec, workers=1)
        paths.append(path)
    return paths


def measure(args: argparse.Namespace, work: Path) -> dict:
    """Run the cohort and return the per-slide samples and the summary figures."""
    from sammil_deploy.bundle import load_bundle
    from sammil_deploy.pipeline.infer import InferConfig, run_slides

    slides = _slides(work, args.slides)
    bundle = load_bundle(_bundle(work))
    cfg = InferConfig(backend=args.backend, device="cpu", batch_size=16, num_workers=args.num_workers,
                      intra_op_threads=args.threads)  # fmt: skip
    out = work / f"out_{int(time.time())}"
    samples: list[dict] = []
    start = time.perf_counter()
    before = {"rss_kib": _status_kib("VmRSS"), "fds": _fds()}

    def sample(record) -> None:
        samples.append({"slide": record.slide.stem, "status": record.status, "rss_kib": _status_kib("VmRSS"),
                        "peak_kib": _status_kib("VmHWM"), "fds": _fds(),
                        "seconds": round(time.perf_counter() - start, 2)})  # fmt: skip

    summary = run_slides(slides, bundle, cfg, out, on_record=sample)
    rss = np.array([s["rss_kib"] for s in samples], np.float64) / 1024
    after = np.arange(len(rss))[args.warmup :]
    slope = float(np.polyfit(after, rss[args.warmup :], 1)[0]) if len(after) >= 2 else float("nan")
    return {
        "slides": len(slides),
        "done": len(summary.done),
        "backend": args.backend,
        "num_workers": args.num_workers,
        "rss_before_mib": round(before["rss_kib"] / 1024, 1),
        "rss_after_first_slide_mib": round(float(rss[0]), 1),
        "rss_last_mib": round(float(rss[-1]), 1),
        "peak_rss_mib": round(max(s["peak_kib"] for s in samples) / 1024, 1),
        "growth_per_slide_kib": round(slope * 1024, 1),
        "growth_after_warmup_mib": round(float(rss[-1] - rss[args.warmup]), 1),
        "warmup_slides": args.warmup,
        "fds_before": before["fds"],
        "fds_after": _fds(),
        "seconds": round(time.perf_counter() - start, 1),
        "samples": samples,
    }


def main() -> None:
    """Parse the arguments, measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--machine", default=platform.node())
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cohort_memory_"))
    result = measure(args, work)
    result.update(machine=args.machine, load_average=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count())
    table = Table("figure", "value", title=f"cohort memory: {result['slides']} slides, {args.backend}")
    for key in ("rss_before_mib", "rss_after_first_slide_mib", "rss_last_mib", "peak_rss_mib",
                "growth_per_slide_kib", "growth_after_warmup_mib", "fds_before", "fds_after", "seconds"):  # fmt: skip
        table.add_row(key, str(result[key]))
    Console().print(table)
    if args.out is not None:
        write_json(args.out, result, sort_keys=False)


if __name__ == "__main__":
    main()
