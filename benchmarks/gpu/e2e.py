"""End-to-end ``infer`` of a large synthetic slide on CUDA with the torch backend: fp32/bf16, compile off/on.

Part of the GPU validation kit (``benchmarks/gpu/run.sh``). Writes ``e2e.json`` after every variant, so a run
cut short by its time budget still leaves what finished, and ``e2e.md`` at the end. Each variant loads the
networks, runs the slide once (the first run pays cuDNN autotuning and ``torch.compile``) and once more (the
warm figure). Weights are seeded random (speed, not diagnosis); the segmenter is the fallback one, so SAM is
timed by the benchmark suite instead. Probabilities are compared with eager fp32 on the same slide.

    python benchmarks/gpu/e2e.py --out OUT [--width-px 40000 --height-px 32000] [--deadline-s 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = {  # name -> (autocast precision, torch.compile); in run order, compile-bf16 before compile-fp32
    "eager-fp32": ("fp32", False),
    "eager-bf16": ("bf16", False),
    "compile-bf16": ("bf16", True),
    "compile-fp32": ("fp32", True),
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Output folder (e2e.json, e2e.md, work/).")
    parser.add_argument("--width-px", type=int, default=40_000)
    parser.add_argument("--height-px", type=int, default=32_000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=32, help="infer's default batch.")
    parser.add_argument("--workers", type=int, default=8, help="Patch-reader processes.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated of {', '.join(VARIANTS)}.")
    parser.add_argument("--deadline-s", type=float, default=200.0, help="Skip variants that would not finish.")
    return parser.parse_args(argv)


def _setup(args: argparse.Namespace, work: Path) -> tuple[Any, Path, dict[str, Any]]:
    """The synthetic slide and a PyTorch-only bundle of seeded random weights (as the benchmark builds it)."""
    from sammil_deploy.bench.bench_setup import BenchSetup
    from sammil_deploy.bench.end_to_end import build_bundle
    from sammil_deploy.bench.timing import TimingPolicy
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    slide = work / f"synthetic_{args.width_px}x{args.height_px}.svs"
    start = time.perf_counter()
    if not slide.is_file():
        spec = SyntheticSlideSpec(width_px=args.width_px, height_px=args.height_px, mpp=0.5)
        write_synthetic_slide(slide, spec, workers=os.cpu_count())
    setup = {"slide": slide.name, "slide_bytes": slide.stat().st_size, "slide_write_s": time.perf_counter() - start}
    ctx = BenchSetup(device=args.device, threads=0, timing=TimingPolicy(), work_dir=work, slide=slide)
    start = time.perf_counter()
    bundle = build_bundle(ctx, (), args.batch_size)
    setup["bundle_s"] = time.perf_counter() - start
    return bundle, slide, setup


def _run_variant(name: str, bundle: Any, slide: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from sammil_deploy.pipeline.backends import open_slide_backends
    from sammil_deploy.pipeline.infer import InferConfig, run_slide
    from sammil_deploy.runtime import open_backend

    precision, compiled = VARIANTS[name]
    cfg = InferConfig(
        backend="torch", device=args.device, precision=precision, batch_size=args.batch_size, num_workers=args.workers
    )
    models = open_slide_backends(bundle, "torch", device=args.device, precision=precision)
    try:
        if compiled:  # the same module and specs as infer's torch backend, wrapped in torch.compile
            eager = models.features
            models.features = open_backend(
                "torch", eager.module, input_spec=eager.input_spec, output_spec=eager.output_spec,
                device=eager.device, precision=precision, compile=True, name=f"{eager.artifact} (compiled)",
            )  # fmt: skip
        runs = []
        for _ in range(2):
            start = time.perf_counter()
            result = run_slide(slide, bundle, cfg, out / name, models=models)
            runs.append(time.perf_counter() - start)
    finally:
        models.close()
    return {
        "variant": name,
        "status": "ok",
        "precision": precision,
        "compile": compiled,
        "patches": result.n_patches,
        "first_run_s": round(runs[0], 2),
        "warm_run_s": round(runs[1], 2),
        "warm_patches_per_s": round(result.n_patches / runs[1], 1),
        "stage_seconds_warm": {k: round(v, 3) for k, v in result.stage_seconds.items()},
        "probabilities": result.probabilities,
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# End-to-end infer, {report['setup'].get('slide', '?')} on {report['gpu']}",
        "",
        f"torch {report['torch']}, batch {report['batch_size']}, {report['workers']} reader workers; seeded random "
        "weights, fallback segmenter. Warm = second run of the slide with the networks loaded.",
        "",
        "| variant | status | patches | first run s | warm run s | warm patches/s | max abs Δp vs eager fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['variant']} | {row['status']}: {row['reason']} | | | | | |")
            continue
        delta = row.get("max_abs_prob_diff_vs_eager_fp32")
        lines.append(
            f"| {row['variant']} | ok | {row['patches']} | {row['first_run_s']} | {row['warm_run_s']} | "
            f"{row['warm_patches_per_s']} | {'-' if delta is None else f'{delta:.2e}'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the variants within the deadline; exit 1 when one failed or none ran."""
    import torch

    args = _parse(argv)
    started = time.monotonic()
    out = args.out
    (out / "work").mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
    report: dict[str, Any] = {
        "gpu": gpu, "torch": torch.__version__, "batch_size": args.batch_size, "workers": args.workers,
        "size_px": [args.width_px, args.height_px], "setup": {}, "rows": [],
    }  # fmt: skip

    def save() -> None:
        (out / "e2e.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        (out / "e2e.md").write_text(_markdown(report))

    bundle, slide, report["setup"] = _setup(args, out / "work")
    save()
    reference = None
    last_s = 0.0
    for name in [v for v in args.variants.split(",") if v]:
        left_s = args.deadline_s - (time.monotonic() - started)
        if name not in VARIANTS:
            row = {"variant": name, "status": "failed", "reason": f"unknown variant; choose from {list(VARIANTS)}"}
        elif left_s < 1.5 * last_s:
            row = {"variant": name, "status": "skipped", "reason": f"time budget: {left_s:.0f} s left"}
        else:
            start = time.monotonic()
            try:
                row = _run_variant(name, bundle, slide, args, out / "work" / "runs")
            except Exception as err:  # noqa: BLE001  (report every failure as a row and go on)
                row = {"variant": name, "status": "failed", "reason": f"{type(err).__name__}: {err}"}
            last_s = time.monotonic() - start
        if row["status"] == "ok":
            reference = reference or (row if name == "eager-fp32" else None)
            if reference is not None:
                ref = reference["probabilities"]
                row["max_abs_prob_diff_vs_eager_fp32"] = max(abs(p - ref[k]) for k, p in row["probabilities"].items())
        report["rows"].append(row)
        save()
        print(json.dumps({k: row[k] for k in row if k != "stage_seconds_warm"}), flush=True)  # noqa: T201
    statuses = {row["status"] for row in report["rows"]}
    return 0 if statuses and statuses <= {"ok", "skipped"} and "ok" in statuses else 1


if __name__ == "__main__":
    sys.exit(main())
