"""`infer` (slides → probabilities, heatmaps, GeoJSON, reports) and `make-bundle` (what infer loads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from sammil_deploy.cli.app import app, console, print_json
from sammil_deploy.errors import ConfigError
from sammil_deploy.runtime.factory import BACKEND_KINDS

if TYPE_CHECKING:
    from sammil_deploy.pipeline.batch import BatchSummary
    from sammil_deploy.pipeline.infer import SlideResult

_STATUS = {
    "done": "[green]done[/green]",
    "skipped": "skipped (exists)",
    "locked": "[yellow]locked (other run)[/yellow]",
    "failed": "[red]failed[/red]",
}


@app.command("infer")
def infer_cmd(
    slides: Annotated[list[Path], typer.Argument(help="Slide files, folders of slides, or .txt/.csv slide lists.")],
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle folder (sammil-deploy make-bundle).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/infer"),
    backend: Annotated[str | None, typer.Option(help=f"{', '.join(BACKEND_KINDS)}.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    precision: Annotated[
        str | None, typer.Option(help="torch: fp32/bf16/fp16 autocast; exported backends: artifact precision.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML with an \\[infer] table (see InferConfig).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Patches per encoder call.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="Patch-reader processes (0: read in this process).")] = None,
    save_features: Annotated[
        bool, typer.Option("--save-features", help="Also write features/<id>.h5 (the extract format).")
    ] = False,
    threshold: Annotated[
        str | None,
        typer.Option(help="Binary decision: youden (the bundle's, chosen at training), 0.5, or a probability."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo slides whose report exists.")] = False,
    continue_on_error: Annotated[
        bool, typer.Option("--continue-on-error/--stop-on-error", help="Record a failing slide and go on.")
    ] = True,
    ray: Annotated[
        bool, typer.Option("--ray", help="Distribute slides with Ray (needs the 'ray' extra); see --ray-address.")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to attach to (auto, ray://host:10001); default: start a local one."),
    ] = None,
    ray_workers: Annotated[int | None, typer.Option(help="Ray actors (default: one per GPU, or 1).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable summary on stdout.")] = False,
) -> None:
    """Classify slides end to end; write reports/, heatmaps/, geojson/ and summary.csv (resumes finished slides)."""
    from sammil_deploy.bundle import load_bundle
    from sammil_deploy.pipeline.infer import collect_slides, load_infer_config, run_slides
    from sammil_deploy.runtime.devices import check_device

    cfg = load_infer_config(
        config,
        overrides={
            "backend": backend,
            "device": device,
            "precision": precision,
            "batch_size": batch_size,
            "num_workers": num_workers,
            "save_features": save_features or None,
            "threshold": threshold,
        },
    )
    check_device(cfg.device)
    paths = collect_slides(slides)
    loaded = load_bundle(bundle)
    if loaded.encoder.get("random_weights"):
        console.print("[yellow]warning:[/yellow] the bundle's encoder has RANDOM weights (demo bundle): its "
                      "predictions are meaningless", highlight=False)  # fmt: skip

    def run(on_record: Callable | None, progress: Callable | None) -> BatchSummary[SlideResult]:
        if not ray:
            if ray_address is not None or ray_workers is not None:
                raise ConfigError("--ray-address and --ray-workers need --ray")
            return run_slides(
                paths, loaded, cfg, out, overwrite=overwrite, continue_on_error=continue_on_error,
                on_record=on_record, progress=progress,
            )  # fmt: skip
        from sammil_deploy.pipeline.distributed import run_slides_ray

        # Ray actors report per slide (no per-stage progress crosses the cluster).
        return run_slides_ray(
            paths, bundle, cfg, out, address=ray_address, workers=ray_workers,
            overwrite=overwrite, continue_on_error=continue_on_error, on_record=on_record,
        )  # fmt: skip

    if as_json:
        summary = run(None, None)
        print_json({"out": str(out), "report": str(out / "report.html"), **summary.to_dict()})
        raise typer.Exit(code=0 if summary.all_succeeded else 1)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        slides_task = bar.add_task("slides", total=len(paths))
        stage_task = bar.add_task("", total=None)

        def on_stage(slide: Path, stage: str, done: int, total: int) -> None:
            bar.update(stage_task, description=f"{slide.name}: {stage}", completed=done, total=total)

        summary = run(lambda _r: bar.advance(slides_task), on_stage)
    render_summary(summary, out, loaded.class_names)
    raise typer.Exit(code=0 if summary.all_succeeded else 1)


def render_summary(summary: BatchSummary[SlideResult], out: Path, class_names: tuple[str, ...]) -> None:
    """Per-slide table (label, probability, patches, segments, time) on stderr, then one line per failure."""
    positive = class_names[-1]
    table = Table(
        "slide", "status", "label", f"P({positive})", "patches", "segments", "seconds", "patches/s",
        title=f"infer → {out}",
    )  # fmt: skip
    for record in summary.records:
        r = record.result
        rep = r.report if r is not None else None
        table.add_row(
            record.slide.name,
            _STATUS[record.status],
            "" if rep is None else rep["prediction"]["label"],
            "" if rep is None else f"{rep['prediction']['probabilities'][positive]:.4f}",
            "" if rep is None else str(rep["counts"]["patches"]),
            "" if rep is None else str(rep["counts"]["segments"]),
            f"{record.seconds:.2f}",
            "" if rep is None else f"{rep['patches_per_s']['end_to_end'] or 0:.1f}",
        )
    console.print(table)
    console.print(f"summary: {out / 'summary.csv'}", highlight=False)
    console.print(f"report: {out / 'report.html'}", highlight=False)
    for record in summary.failed:
        console.print(f"[red]error:[/red] {record.detail}", highlight=False, soft_wrap=True)


@app.command("make-bundle")
def make_bundle_cmd(
    checkpoint: Annotated[Path, typer.Option(help="Trained MIL checkpoint (.safetensors).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to create.")],
    export_dir: Annotated[
        Path | None, typer.Option(help="Output folder of `sammil-deploy export` (ONNX/plans); omit for torch only.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="The extract TOML the training features were made with.")] = None,
    preset: Annotated[str | None, typer.Option(help="CLAM tissue preset: bwh_biopsy, tcga or bwh_resection.")] = None,
    segmenter: Annotated[str | None, typer.Option(help="auto, sam or fallback.")] = None,
    sam_checkpoint: Annotated[Path | None, typer.Option(help="SAM .pth to bundle (segmenter sam).")] = None,
    sam_model: Annotated[str | None, typer.Option(help="vit_h, vit_l, vit_b, tiny or auto.")] = None,
    encoder_weights: Annotated[Path | None, typer.Option(help="Encoder weights the features came from.")] = None,
    allow_random_weights: Annotated[
        bool, typer.Option("--allow-random-weights", help="Bundle a seeded random encoder (demo/test only).")
    ] = False,
    interpolation: Annotated[str | None, typer.Option(help="Patch resize: bicubic or bilinear.")] = None,
    patch_size: Annotated[int | None, typer.Option(help="Patch side in level-0 px (SAM-MIL: 512).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle folder.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable description on stdout.")] = False,
) -> None:
    """Assemble a checked inference bundle: MIL checkpoint, encoder, SAM, exported parts, preprocessing."""
    from sammil_deploy.bundle import make_bundle
    from sammil_deploy.pipeline.extract import load_extract_config

    preprocess = load_extract_config(
        config,
        preset=preset,
        overrides={
            # Checkpoint and model first: segmenter "sam" is validated against them when it is set.
            "segment.sam_checkpoint": sam_checkpoint,
            "segment.sam_model": sam_model,
            "segment.segmenter": segmenter,
            "features.weights": encoder_weights,
            "features.allow_random": allow_random_weights or None,
            "features.interpolation": interpolation,
            "patch.patch_size_px": patch_size,
        },
    )
    result = make_bundle(out, checkpoint, export_dir, preprocess, overwrite=overwrite)
    if as_json:
        print_json(result.describe())
        return
    table = Table("part", "value", title=f"bundle → {out}")
    for key, value in result.describe().items():
        table.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    console.print(table)
