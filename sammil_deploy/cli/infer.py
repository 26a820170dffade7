"""`infer` (slides → probabilities, heatmaps, GeoJSON, reports) and `make-bundle` (what infer loads)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from sammil_deploy.cli.app import app, console, print_json
from sammil_deploy.cli.options import (
    BatchSizeOpt,
    DeviceOpt,
    InterpolationOpt,
    JsonOpt,
    NumWorkersOpt,
    OverwriteOpt,
    PatchSizeOpt,
    PresetOpt,
)
from sammil_deploy.cli.render import SECONDS, batch_progress, batch_table, exit_for, render_failures, warn
from sammil_deploy.runtime.factory import BACKEND_KINDS

if TYPE_CHECKING:
    from sammil_deploy.pipeline.batch import BatchSummary
    from sammil_deploy.pipeline.infer import SlideResult

PrecisionOpt = Annotated[
    str | None, typer.Option(help="torch: fp32/bf16/fp16 autocast; exported backends: artifact precision.")
]
SaveFeaturesOpt = Annotated[
    bool, typer.Option("--save-features", help="Also write features/<id>.h5 (the extract format).")
]
ThresholdOpt = Annotated[
    str | None, typer.Option(help="Binary decision: youden (the bundle's, chosen at training), 0.5, or a probability.")
]
ContinueOpt = Annotated[
    bool, typer.Option("--continue-on-error/--stop-on-error", help="Record a failing slide and go on.")
]
RayOpt = Annotated[
    bool, typer.Option("--ray", help="Distribute slides with Ray (needs the 'ray' extra); see --ray-address.")
]
RayAddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster to attach to (auto, ray://host:10001); default: start a local one.")
]
RayWorkersOpt = Annotated[int | None, typer.Option(help="Ray actors (default: one per GPU, or 1).")]


@app.command("infer")
def infer_cmd(
    slides: Annotated[list[Path], typer.Argument(help="Slide files, folders of slides, or .txt/.csv slide lists.")],
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle folder (sammil-deploy make-bundle).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/infer"),
    backend: Annotated[str | None, typer.Option(help=f"{', '.join(BACKEND_KINDS)}.")] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    config: Annotated[Path | None, typer.Option(help="TOML with an \\[infer] table (see InferConfig).")] = None,
    batch_size: BatchSizeOpt = None,
    num_workers: NumWorkersOpt = None,
    save_features: SaveFeaturesOpt = False,
    threshold: ThresholdOpt = None,
    overwrite: OverwriteOpt = False,
    continue_on_error: ContinueOpt = True,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    ray_workers: RayWorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Classify slides end to end; write reports/, heatmaps/, geojson/ and summary.csv (resumes finished slides)."""
    from sammil_deploy.bundle import load_bundle
    from sammil_deploy.pipeline.executors import infer_cohort, ray_placement
    from sammil_deploy.pipeline.infer import collect_slides, load_infer_config
    from sammil_deploy.runtime.devices import check_device

    overrides = {
        "backend": backend, "device": device, "precision": precision, "batch_size": batch_size,
        "num_workers": num_workers, "save_features": save_features or None, "threshold": threshold,
    }  # fmt: skip
    cfg = load_infer_config(config, overrides=overrides)
    check_device(cfg.device)
    paths = collect_slides(slides)
    loaded = load_bundle(bundle)
    if loaded.encoder.get("random_weights"):
        warn("the bundle's encoder has RANDOM weights (demo bundle): its predictions are meaningless")
    placement = ray_placement(ray, ray_address, ray_workers)
    with batch_progress(len(paths), enabled=not as_json) as bar:
        summary = infer_cohort(
            paths, bundle, cfg, out, bundle=loaded, ray=placement, overwrite=overwrite,
            continue_on_error=continue_on_error, on_record=bar.on_record,
            progress=lambda slide, stage, done, total: bar.stage(f"{slide.name}: {stage}", done, total),
        )  # fmt: skip
    if as_json:
        print_json({"out": str(out), "report": str(out / "report.html"), **summary.to_dict()})
    else:
        render_summary(summary, out, loaded.class_names)
    exit_for(summary)


def render_summary(summary: BatchSummary[SlideResult], out: Path, class_names: tuple[str, ...]) -> None:
    """Per-slide table (label, probability, patches, segments, time) on stderr, then one line per failure."""
    positive = class_names[-1]
    console.print(batch_table(summary, f"infer → {out}", [
        ("label", lambda r: r.report["prediction"]["label"]),
        (f"P({positive})", lambda r: f"{r.report['prediction']['probabilities'][positive]:.4f}"),
        ("patches", lambda r: str(r.report["counts"]["patches"])),
        ("segments", lambda r: str(r.report["counts"]["segments"])),
        ("seconds", SECONDS),
        ("patches/s", lambda r: f"{r.report['patches_per_s']['end_to_end'] or 0:.1f}"),
    ]))  # fmt: skip
    console.print(f"summary: {out / 'summary.csv'}", highlight=False)
    console.print(f"report: {out / 'report.html'}", highlight=False)
    render_failures(summary)


@app.command("make-bundle")
def make_bundle_cmd(
    checkpoint: Annotated[Path, typer.Option(help="Trained MIL checkpoint (.safetensors).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to create.")],
    export_dir: Annotated[
        Path | None, typer.Option(help="Output folder of `sammil-deploy export` (ONNX/plans); omit for torch only.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="The extract TOML the training features were made with.")] = None,
    preset: PresetOpt = None,
    segmenter: Annotated[str | None, typer.Option(help="auto, sam or fallback.")] = None,
    sam_checkpoint: Annotated[Path | None, typer.Option(help="SAM .pth to bundle (segmenter sam).")] = None,
    sam_model: Annotated[str | None, typer.Option(help="vit_h, vit_l, vit_b, tiny or auto.")] = None,
    encoder_weights: Annotated[Path | None, typer.Option(help="Encoder weights the features came from.")] = None,
    allow_random_weights: Annotated[
        bool, typer.Option("--allow-random-weights", help="Bundle a seeded random encoder (demo/test only).")
    ] = False,
    interpolation: InterpolationOpt = None,
    patch_size: PatchSizeOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle folder.")] = False,
    as_json: JsonOpt = False,
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
