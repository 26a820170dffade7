"""Our patch-feature extraction vs the CLAM-style baseline, side by side: same slide, patches and encoder.

Both sides go from the slide file to an HDF5 of (N, 1024) features and coordinates; each timed call is one
whole extraction (DataLoader or reader-process start-up included, as a one-slide run pays them). Ours is what
``extract`` runs: :func:`sammil_deploy.features.encoding.extract_features` (the shared encoding engine: tile
reader, uint8 NHWC batches) on the backend ``extract --backend auto`` picks on the device (ONNX Runtime on the
CPU, fed the run's exported ONNX file; PyTorch on CUDA), plus a PyTorch-backend row that separates the engine's
gain from the backend's, followed by one HDF5 write; the baseline is :func:`.clam_baseline.clam_style_extract`
(PyTorch module, OpenSlide). The encoder weights are the run's random ResNet50-trunc weights (speed only),
shared by all. The first row (CLAM-style with CLAM's own worker choice) is the reference, and
each row's notes carry the features' agreement with it: equal to float rounding for patches inside the slide;
patches reaching past the slide border differ, because CLAM's ``convert("RGB")`` turns OpenSlide's transparent
padding black where our reader pads white.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.bench.backends import parity
from sammil_deploy.bench.bench_setup import BenchSetup
from sammil_deploy.bench.reading import tissue_coords_level0_xy
from sammil_deploy.bench.report import BenchmarkResult
from sammil_deploy.bench.suites import ExtractionBench
from sammil_deploy.bench.timing import time_interleaved
from sammil_deploy.features.encoding import EncoderConfig, extract_features

if TYPE_CHECKING:
    from sammil_deploy.features.encoders import PatchEncoder
    from sammil_deploy.runtime import Backend

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


def bench_extraction(cfg: ExtractionBench, ctx: BenchSetup) -> list[BenchmarkResult]:
    """Time the CLAM-style loop (per ``cfg.clam_workers``) and ours (per ``cfg.workers``), interleaved."""
    from sammil_deploy.bench.clam_baseline import write_coords_h5
    from sammil_deploy.bench.components import resnet50_network
    from sammil_deploy.features.encoders import create_encoder

    folder = ctx.work_dir / "extraction"
    folder.mkdir(parents=True, exist_ok=True)
    slide = ctx.pipeline_slide
    coords = tissue_coords_level0_xy(slide, PATCH_PX, cfg.patches)
    coords_h5 = write_coords_h5(folder / "coords.h5", coords, PATCH_PX)
    encoder = create_encoder("resnet50_trunc", weights=ctx.encoder_weights())
    onnx = None
    if ctx.device.startswith("cpu"):  # what `extract --backend auto` runs on the CPU: the encoder's ONNX export
        net = resnet50_network(ctx)
        onnx = ctx.exports.onnx_path(net.name, net.module, net.spec, net.example, "fp32")
    calls, labels = _clam_calls(cfg, ctx, slide, coords_h5, encoder, folder)
    backends = _our_backends(encoder, ctx, cfg, onnx)
    for workers in cfg.workers:
        for kind, backend in backends.items():
            key = f"ours-{kind}-{workers}"
            out = folder / f"{key}.h5"
            ours_cfg = EncoderConfig(batch_size=cfg.batch_size, num_workers=workers)

            def ours(out: Path = out, ours_cfg: EncoderConfig = ours_cfg, backend: Backend = backend) -> None:
                size_px, filt = encoder.input_size_px, cfg.interpolation
                feats = extract_features(
                    slide, coords, PATCH_PX, backend, ours_cfg, input_size_px=size_px, interpolation=filt
                )
                write_features_h5(out, feats, coords)

            calls[key] = ours
            labels[key] = (f"ours ({kind}), {workers} workers", cfg.precision, workers, str(out))

    ctx.progress(f"{COMPONENT}: timing {len(calls)} extraction loops on {cfg.patches} patches")
    try:
        stats = time_interleaved(calls, cfg.timing or ctx.timing, timer=ctx.timer)
    finally:
        for backend in backends.values():
            backend.close()
    size = f"{cfg.patches} patches {PATCH_PX}->{encoder.input_size_px} px, batch {cfg.batch_size}"
    return _rows(cfg, ctx, slide, coords, size, stats, labels, first=next(iter(calls)))


def _clam_calls(
    cfg: ExtractionBench, ctx: BenchSetup, slide: Path, coords_h5: Path, encoder: PatchEncoder, folder: Path
) -> tuple[dict[str, Any], dict[str, tuple[str, str, int, str]]]:
    """``(timed calls, labels)`` of the CLAM-style loop per ``cfg.clam_workers``.

    Labels map each key to ``(backend label, precision, workers, output HDF5)``.
    """
    import torch

    from sammil_deploy.bench.clam_baseline import clam_num_workers, clam_style_extract

    calls: dict[str, Any] = {}
    labels: dict[str, tuple[str, str, int, str]] = {}
    for requested in cfg.clam_workers:
        workers = clam_num_workers(ctx.device) if requested < 0 else requested
        key = f"clam-{requested}"
        out = folder / f"{key}.h5"
        calls[key] = lambda out=out, workers=workers: clam_style_extract(
            slide, coords_h5, encoder, out, batch_size=cfg.batch_size, num_workers=workers,
            device=torch.device(ctx.device), interpolation=cfg.interpolation,
        )  # fmt: skip
        rule = " (CLAM's choice)" if requested < 0 else ""
        labels[key] = (f"clam-style, {workers} workers{rule}", "fp32", workers, str(out))
    return calls, labels


def _rows(
    cfg: ExtractionBench,
    ctx: BenchSetup,
    slide: Path,
    coords: np.ndarray,
    size: str,
    stats: dict[str, Any],
    labels: dict[str, tuple[str, str, int, str]],
    *,
    first: str,
) -> list[BenchmarkResult]:
    """One row per timed loop, with its features' agreement with the reference loop ``first``."""
    import h5py

    inside = _inside_slide(slide, coords)
    with h5py.File(labels[first][3], "r") as f:
        reference = {"features": f["features"][:]}
    rows = []
    for key, (backend, precision, workers, out) in labels.items():
        with h5py.File(out, "r") as f:
            features = f["features"][:]
        rows.append(BenchmarkResult(
            COMPONENT, backend, precision, size, cfg.patches, "patches", timing=stats[key], device=ctx.device,
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
                "slide": slide.name,
                "timed_call": "slide file -> features HDF5, reader start-up included (a one-slide run)",
            },
        ))  # fmt: skip
    return rows


def _our_backends(encoder: PatchEncoder, ctx: BenchSetup, cfg: ExtractionBench, onnx: Path | None) -> dict:
    """``{label: loaded feature backend}``: what ``extract --backend auto`` picks here, and PyTorch."""
    from sammil_deploy.features.encoding import EncoderConfig
    from sammil_deploy.pipeline.feature_backend import open_feature_backend

    common = {"device": ctx.device, "precision": cfg.precision, "intra_op_threads": ctx.threads}
    backends = {"torch": open_feature_backend(encoder, EncoderConfig(backend="torch", **common))}
    if onnx is not None and cfg.precision == "fp32":
        ort_cfg = EncoderConfig(backend="onnxruntime", model_file=onnx, **common)
        backends = {"onnxruntime": open_feature_backend(encoder, ort_cfg), **backends}
    return backends
