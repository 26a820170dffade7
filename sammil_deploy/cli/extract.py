"""`extract` command: tissue, patches, segments, ResNet features and group features for slides."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sammil_deploy.cli.app import app, console, print_json
from sammil_deploy.cli.options import (
    BatchSizeOpt,
    EncoderWeightsOpt,
    InterpolationOpt,
    JsonOpt,
    MppOpt,
    NumWorkersOpt,
    OverwriteOpt,
    PatchSizeOpt,
    PresetOpt,
    SamCheckpointOpt,
    SamModelOpt,
    SegmenterOpt,
)
from sammil_deploy.cli.render import SECONDS, batch_progress, batch_table, exit_for, render_failures, warn

if TYPE_CHECKING:
    from sammil_deploy.pipeline.batch import BatchSummary
    from sammil_deploy.pipeline.extract import ExtractResult

ConfigOpt = Annotated[Path | None, typer.Option(help="TOML config with tissue, patch, segment and features tables.")]
EncoderOpt = Annotated[str | None, typer.Option(help="Patch encoder (resnet50_trunc).")]
DownloadOpt = Annotated[
    bool, typer.Option("--download-weights", help="Download ImageNet weights to the torch hub cache.")
]
RandomWeightsOpt = Annotated[
    bool, typer.Option("--allow-random-weights", help="Random encoder weights (demo/test: meaningless features).")
]
PrecisionOpt = Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (fp16 on CUDA only).")]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        help="Encoder runtime: auto (onnxruntime on the CPU when installed, else torch), torch, "
        "onnxruntime or tensorrt (with --model-file)."
    ),
]
ModelFileOpt = Annotated[
    Path | None, typer.Option(help="Exported encoder to run (resnet50 .onnx or TensorRT .plan from `export`).")
]
ReaderOpt = Annotated[
    str | None, typer.Option(help="Slide reader: auto (tile-aligned JPEG decoding where possible), openslide, tiled.")
]


@app.command("extract")
def extract_cmd(
    slide_or_dir: Annotated[Path, typer.Argument(help="A slide file, or a folder of slides.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (features/ and segments/ go inside).")],
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    segmenter: SegmenterOpt = None,
    sam_checkpoint: SamCheckpointOpt = None,
    sam_model: SamModelOpt = None,
    encoder: EncoderOpt = None,
    encoder_weights: EncoderWeightsOpt = None,
    download_weights: DownloadOpt = False,
    allow_random_weights: RandomWeightsOpt = False,
    batch_size: BatchSizeOpt = None,
    num_workers: NumWorkersOpt = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (encoder and SAM).")] = None,
    precision: PrecisionOpt = None,
    interpolation: InterpolationOpt = None,
    backend: BackendOpt = None,
    model_file: ModelFileOpt = None,
    reader: ReaderOpt = None,
    patch_size: PatchSizeOpt = None,
    mpp: MppOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Extract features and SAM group features; write <out>/features/<id>.h5 (skips slides already done)."""
    from sammil_deploy.pipeline.extract import extract_slides, load_extract_config
    from sammil_deploy.runtime.devices import check_device
    from sammil_deploy.slide import find_slides

    overrides = {
        "segment.segmenter": segmenter, "segment.sam_checkpoint": sam_checkpoint, "segment.sam_model": sam_model,
        "segment.device": device, "features.encoder": encoder, "features.weights": encoder_weights,
        "features.download": download_weights or None, "features.allow_random": allow_random_weights or None,
        "features.batch_size": batch_size, "features.num_workers": num_workers, "features.device": device,
        "features.precision": precision, "features.interpolation": interpolation, "features.backend": backend,
        "features.model_file": model_file, "features.reader": reader, "patch.patch_size_px": patch_size, "mpp": mpp,
    }  # fmt: skip
    cfg = load_extract_config(config, preset=preset, overrides=overrides)
    for option, value in (("features.device", cfg.features.device), ("segment.device", cfg.segment.device)):
        check_device(value, option=option if device is None else "--device")
    slides = find_slides(slide_or_dir)
    if cfg.features.allow_random:
        warn("RANDOM encoder weights (--allow-random-weights): the features are meaningless; use them for demos "
             "and tests only")  # fmt: skip
    with batch_progress(len(slides), enabled=not as_json) as bar:
        summary = extract_slides(
            slides, cfg, out, overwrite=overwrite, on_record=bar.on_record,
            progress=lambda slide, done, total: bar.stage(f"patches {slide.name}", done, total),
        )  # fmt: skip
    if as_json:
        print_json({"out": str(out), **summary.to_dict()})
    else:
        render_summary(summary, out)
    exit_for(summary)


def render_summary(summary: BatchSummary[ExtractResult], out: Path) -> None:
    """Per-slide table (patches, segments, seconds) on stderr, then one line per failure."""
    console.print(batch_table(summary, f"extract → {out}", [
        ("patches", lambda r: str(r.n_patches)),
        ("masks", lambda r: str(r.n_masks)),
        ("segments", lambda r: str(r.n_groups)),
        ("features s", lambda r: f"{r.stage_seconds['features']:.2f}"),
        ("patches/s", lambda r: f"{r.patches_per_s:.1f}"),
        ("seconds", SECONDS),
    ]))  # fmt: skip
    render_failures(summary)
