"""`export` command: SAM encoder/decoder, ResNet50-trunc and the MIL head to ONNX (and TensorRT), with parity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sammil_deploy.cli.app import app, console, print_json, stdout
from sammil_deploy.cli.options import JsonOpt


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output folder for .onnx/.plan files and the manifest.")],
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Trained MIL checkpoint (.safetensors).")
    ] = None,
    sam_checkpoint: Annotated[Path | None, typer.Option(help="SAM checkpoint (sam_vit_h_4b8939.pth ...).")] = None,
    sam_model: Annotated[str, typer.Option(help="vit_h, vit_l, vit_b, tiny, or auto (from the checkpoint).")] = "auto",
    encoder_weights: Annotated[Path | None, typer.Option(help="ResNet-50 weights (.pth/.safetensors).")] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32, fp16 (LayerNorm/softmax kept fp32), int8 (ResNet50 Q/DQ, others fp16).")
    ] = None,
    trt: Annotated[bool, typer.Option("--trt", help="Also build TensorRT plans (needs TensorRT and a GPU).")] = False,
    profile: Annotated[Path | None, typer.Option(help="Build profile TOML (export/h100_h200.toml ...).")] = None,
    max_batch: Annotated[int | None, typer.Option(help="Largest ResNet50 batch (TensorRT profile max).")] = None,
    max_instances: Annotated[int | None, typer.Option(help="Largest MIL bag (TensorRT profile max).")] = None,
    only: Annotated[str | None, typer.Option(help="Subset: sam-encoder,sam-decoder,resnet50,mil.")] = None,
    allow_random_weights: Annotated[
        bool, typer.Option("--allow-random-weights", help="Export random SAM/ResNet50 weights (demo/test only).")
    ] = False,
    parity_slide: Annotated[Path | None, typer.Option(help="Also check parity on content of this slide.")] = None,
    calibration_slide: Annotated[
        list[Path] | None, typer.Option(help="Slide(s) for INT8 calibration patches (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export the networks to ONNX (and TensorRT), checking each against PyTorch; exit 1 on a parity failure."""
    from sammil_deploy.config import apply_overrides
    from sammil_deploy.export.api import export_all
    from sammil_deploy.export.config import load_export_config, with_size_limits

    cfg = apply_overrides(load_export_config(profile), {"precision": precision})
    cfg = with_size_limits(cfg, max_batch=max_batch, max_instances=max_instances)
    with console.status("exporting") as status:
        report = export_all(
            checkpoint, sam_checkpoint, sam_model, encoder_weights, out, cfg,
            only=only, trt=trt, allow_random_weights=allow_random_weights, parity_slide=parity_slide,
            calibration_slides=tuple(calibration_slide or ()), progress=lambda msg: status.update(msg),
        )  # fmt: skip
    if as_json:
        print_json(report.to_dict())
    else:
        _render(report)
    for failure in report.failures():
        console.print(failure, highlight=False)
    raise typer.Exit(code=0 if report.passed else 1)


def _render(report) -> None:  # noqa: ANN001
    table = Table("part", "artifact", "precision", "size", "export s", "parity", title=f"export → {report.out_dir}")
    for part in report.parts:
        verdicts = {r.artifact: r for r in part.parity}
        for artifact in part.artifacts:
            parity = verdicts.get(artifact.path.name)
            shown = "-" if parity is None else _verdict(parity)
            size = f"{artifact.size_bytes / 1e6:.1f} MB"
            table.add_row(
                part.part, artifact.path.name, artifact.precision, size, f"{artifact.export_seconds:.1f}", shown
            )
        for parity in part.parity:
            if parity.artifact not in {a.path.name for a in part.artifacts}:
                table.add_row(part.part, parity.artifact, parity.precision, "", "", _verdict(parity))
        if part.engine is not None:
            engine = part.engine
            size = f"{engine.plan.stat().st_size / 1e6:.1f} MB"
            table.add_row(
                part.part, engine.plan.name, engine.meta["precision"], size, f"{engine.build_seconds:.1f}", ""
            )
    stdout.print(table)
    stdout.print(f"manifest: {report.manifest}")


def _verdict(parity) -> str:  # noqa: ANN001
    worst_cos = min(o.cosine for o in parity.outputs)
    worst_rel = max(o.max_rel for o in parity.outputs)
    ious = [o.mask_iou for o in parity.outputs if o.mask_iou is not None]
    iou = f" iou={min(ious):.3f}" if ious else ""
    mark = "[green]ok[/green]" if parity.passed else "[red]FAIL[/red]"
    return f"{mark} cos={worst_cos:.5f} rel={worst_rel:.2g}{iou}"
