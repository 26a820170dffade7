"""`preprocess` command: tissue detection and patch grid for one slide or a folder of slides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sammil_deploy.cli.app import app, console, print_json
from sammil_deploy.cli.options import JsonOpt, MppOpt, OverwriteOpt, PresetOpt
from sammil_deploy.cli.render import SECONDS, batch_progress, batch_table, exit_for, render_failures


@app.command("preprocess")
def preprocess_cmd(
    slide_or_dir: Annotated[Path, typer.Argument(help="A slide file, or a folder of slides.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (patches/ and previews/ go inside).")],
    config: Annotated[Path | None, typer.Option(help="TOML config: tissue and patch tables, mpp, preset.")] = None,
    preset: PresetOpt = None,
    patch_size: Annotated[int | None, typer.Option(help="Patch side in px at --patch-level or --target-mpp.")] = None,
    step: Annotated[int | None, typer.Option(help="Grid step in the same px (default: the patch size).")] = None,
    patch_level: Annotated[int | None, typer.Option(help="Pyramid level the patch size refers to.")] = None,
    target_mpp: Annotated[float | None, typer.Option(help="Patch resolution in microns/px (not with a level).")] = None,
    mpp: MppOpt = None,
    seg_level: Annotated[int | None, typer.Option(help="Level to segment tissue on (-1: auto, ~64x down).")] = None,
    sthresh: Annotated[int | None, typer.Option(help="Saturation threshold 0-255 (CLAM default 8).")] = None,
    a_t: Annotated[float | None, typer.Option("--a-t", help="Min tissue area, in 512² level-0 px patches.")] = None,
    use_otsu: Annotated[bool | None, typer.Option("--use-otsu/--no-otsu", help="Otsu threshold.")] = None,
    contour_fn: Annotated[str | None, typer.Option(help="Patch check: four_pt, four_pt_hard, center or basic.")] = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Find tissue and place patches; write <out>/patches/<id>.h5 and <out>/previews/<id>.png."""
    from sammil_deploy.pipeline.preprocess import load_preprocess_config, preprocess_slides
    from sammil_deploy.slide import find_slides

    overrides = {
        "patch.patch_size_px": patch_size, "patch.step_px": step, "patch.patch_level": patch_level,
        "patch.target_mpp": target_mpp, "patch.contour_fn": contour_fn, "tissue.seg_level": seg_level,
        "tissue.sthresh": sthresh, "tissue.a_t": a_t, "tissue.use_otsu": use_otsu, "mpp": mpp,
    }  # fmt: skip
    cfg = load_preprocess_config(config, preset=preset, overrides=overrides)
    slides = find_slides(slide_or_dir)
    with batch_progress(
        len(slides), label="preprocess", stages=False, enabled=console.is_terminal and not as_json
    ) as bar:
        summary = preprocess_slides(slides, cfg, out, overwrite=overwrite, progress=bar.on_record)
    if as_json:
        print_json({"out": str(out), **summary.to_dict()})
        exit_for(summary)
    if len(slides) > 1 or not summary.failed:
        console.print(batch_table(summary, f"preprocess → {out}", [
            ("patches", lambda r: str(r.n_patches)),
            ("tissue contours", lambda r: str(r.n_contours)),
            ("seconds", SECONDS),
        ]))  # fmt: skip
    render_failures(summary)
    exit_for(summary)
