"""`extract` command: tissue, patches, segments, ResNet features and group features for slides."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from sammil_deploy.cli.app import app, console, print_json

if TYPE_CHECKING:
    from sammil_deploy.pipeline.batch import BatchSummary
    from sammil_deploy.pipeline.extract import ExtractResult

_STATUS = {
    "done": "[green]done[/green]",
    "skipped": "skipped (exists)",
    "locked": "[yellow]locked (other run)[/yellow]",
    "failed": "[red]failed[/red]",
}


@app.command("extract")
def extract_cmd(
    slide_or_dir: Annotated[Path, typer.Argument(help="A slide file, or a folder of slides.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (features/ and segments/ go inside).")],
    config: Annotated[
        Path | None, typer.Option(help="TOML config with tissue, patch, segment and features tables.")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="CLAM tissue preset: bwh_biopsy, tcga or bwh_resection.")] = None,
    segmenter: Annotated[str | None, typer.Option(help="auto (SAM if a checkpoint is given), sam or fallback.")] = None,
    sam_checkpoint: Annotated[Path | None, typer.Option(help="Local SAM checkpoint (sam_vit_h_4b8939.pth).")] = None,
    sam_model: Annotated[str | None, typer.Option(help="vit_h, vit_l, vit_b or auto (from the checkpoint).")] = None,
    encoder: Annotated[str | None, typer.Option(help="Patch encoder (resnet50_trunc).")] = None,
    encoder_weights: Annotated[
        Path | None, typer.Option(help="Encoder weights: torchvision resnet50 .pth or .safetensors.")
    ] = None,
    download_weights: Annotated[
        bool, typer.Option("--download-weights", help="Download ImageNet weights to the torch hub cache.")
    ] = False,
    allow_random_weights: Annotated[
        bool, typer.Option("--allow-random-weights", help="Random encoder weights (demo/test: meaningless features).")
    ] = False,
    batch_size: Annotated[int | None, typer.Option(help="Patches per forward pass.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="Patch-reader processes (0: read in this process).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (encoder and SAM).")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (fp16 on CUDA only).")] = None,
    interpolation: Annotated[
        str | None, typer.Option(help="Patch resize: bicubic (SAM-MIL) or bilinear (CLAM).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Encoder runtime: auto (onnxruntime on the CPU when installed, else torch), torch, "
            "onnxruntime or tensorrt (with --model-file)."
        ),  # fmt: skip
    ] = None,
    model_file: Annotated[
        Path | None, typer.Option(help="Exported encoder to run (resnet50 .onnx or TensorRT .plan from `export`).")
    ] = None,
    reader: Annotated[
        str | None,
        typer.Option(help="Slide reader: auto (tile-aligned JPEG decoding where possible), openslide, tiled."),
    ] = None,
    patch_size: Annotated[int | None, typer.Option(help="Patch side in level-0 px (SAM-MIL: 512).")] = None,
    mpp: Annotated[float | None, typer.Option(help="Microns per level-0 pixel, if the slide has none.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo slides whose feature file exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable summary on stdout.")] = False,
) -> None:
    """Extract features and SAM group features; write <out>/features/<id>.h5 (skips slides already done)."""
    from sammil_deploy.pipeline.extract import extract_slides, load_extract_config
    from sammil_deploy.runtime.devices import check_device
    from sammil_deploy.slide import find_slides

    cfg = load_extract_config(
        config,
        preset=preset,
        overrides={
            "segment.segmenter": segmenter,
            "segment.sam_checkpoint": sam_checkpoint,
            "segment.sam_model": sam_model,
            "segment.device": device,
            "features.encoder": encoder,
            "features.weights": encoder_weights,
            "features.download": download_weights or None,
            "features.allow_random": allow_random_weights or None,
            "features.batch_size": batch_size,
            "features.num_workers": num_workers,
            "features.device": device,
            "features.precision": precision,
            "features.interpolation": interpolation,
            "features.backend": backend,
            "features.model_file": model_file,
            "features.reader": reader,
            "patch.patch_size_px": patch_size,
            "mpp": mpp,
        },
    )
    for option, value in (("features.device", cfg.features.device), ("segment.device", cfg.segment.device)):
        check_device(value, option=option if device is None else "--device")
    slides = find_slides(slide_or_dir)
    if cfg.features.allow_random:
        console.print("[yellow]warning:[/yellow] RANDOM encoder weights (--allow-random-weights): the features are "
                      "meaningless; use them for demos and tests only", highlight=False)  # fmt: skip
    if as_json:
        summary = extract_slides(slides, cfg, out, overwrite=overwrite)
        print_json({"out": str(out), **summary.to_dict()})
        raise typer.Exit(code=0 if summary.all_succeeded else 1)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        slides_task = bar.add_task("slides", total=len(slides))
        patches_task = bar.add_task("patches", total=None)

        def on_patches(slide: Path, done: int, total: int) -> None:
            bar.update(patches_task, description=f"patches {slide.name}", completed=done, total=total)

        summary = extract_slides(
            slides, cfg, out, overwrite=overwrite, on_record=lambda _r: bar.advance(slides_task), progress=on_patches
        )
    render_summary(summary, out)
    raise typer.Exit(code=0 if summary.all_succeeded else 1)


def render_summary(summary: BatchSummary[ExtractResult], out: Path) -> None:
    """Per-slide table (patches, segments, seconds) on stderr, then one line per failure."""
    table = Table(title=f"extract → {out}")
    name_px = min(40, max((len(r.slide.name) for r in summary.records), default=5))
    table.add_column("slide", no_wrap=True, min_width=name_px)  # whole names, so they can be found in logs
    for header in ("status", "patches", "masks", "segments", "features s", "patches/s", "seconds"):
        table.add_column(header)
    for record in summary.records:
        r = record.result
        table.add_row(
            record.slide.name,
            _STATUS[record.status],
            "" if r is None else str(r.n_patches),
            "" if r is None else str(r.n_masks),
            "" if r is None else str(r.n_groups),
            "" if r is None else f"{r.stage_seconds['features']:.2f}",
            "" if r is None else f"{r.patches_per_s:.1f}",
            f"{record.seconds:.2f}",
        )
    console.print(table)
    for record in summary.failed:
        console.print(f"[red]error:[/red] {record.detail}", markup=True, highlight=False, soft_wrap=True)
