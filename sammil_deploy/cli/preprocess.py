"""`preprocess` command: tissue detection and patch grid for one slide or a folder of slides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sammil_deploy.cli.app import app, console, print_json


@app.command("preprocess")
def preprocess_cmd(
    slide_or_dir: Annotated[Path, typer.Argument(help="A slide file, or a folder of slides.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (patches/ and previews/ go inside).")],
    config: Annotated[Path | None, typer.Option(help="TOML config: tissue and patch tables, mpp, preset.")] = None,
    preset: Annotated[str | None, typer.Option(help="CLAM tissue preset: bwh_biopsy, tcga or bwh_resection.")] = None,
    patch_size: Annotated[int | None, typer.Option(help="Patch side in px at --patch-level or --target-mpp.")] = None,
    step: Annotated[int | None, typer.Option(help="Grid step in the same px (default: the patch size).")] = None,
    patch_level: Annotated[int | None, typer.Option(help="Pyramid level the patch size refers to.")] = None,
    target_mpp: Annotated[float | None, typer.Option(help="Patch resolution in microns/px (not with a level).")] = None,
    mpp: Annotated[float | None, typer.Option(help="Microns per level-0 pixel, if the slide has none.")] = None,
    seg_level: Annotated[int | None, typer.Option(help="Level to segment tissue on (-1: auto, ~64x down).")] = None,
    sthresh: Annotated[int | None, typer.Option(help="Saturation threshold 0-255 (CLAM default 8).")] = None,
    a_t: Annotated[float | None, typer.Option("--a-t", help="Min tissue area, in 512² level-0 px patches.")] = None,
    use_otsu: Annotated[bool | None, typer.Option("--use-otsu/--no-otsu", help="Otsu threshold.")] = None,
    contour_fn: Annotated[str | None, typer.Option(help="Patch check: four_pt, four_pt_hard, center or basic.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo slides whose coords file exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable summary on stdout.")] = False,
) -> None:
    """Find tissue and place patches; write <out>/patches/<id>.h5 and <out>/previews/<id>.png."""
    from sammil_deploy.pipeline.preprocess import load_preprocess_config, preprocess_slides
    from sammil_deploy.slide import find_slides

    cfg = load_preprocess_config(
        config,
        preset=preset,
        overrides={
            "patch.patch_size_px": patch_size,
            "patch.step_px": step,
            "patch.patch_level": patch_level,
            "patch.target_mpp": target_mpp,
            "patch.contour_fn": contour_fn,
            "tissue.seg_level": seg_level,
            "tissue.sthresh": sthresh,
            "tissue.a_t": a_t,
            "tissue.use_otsu": use_otsu,
            "mpp": mpp,
        },
    )
    slides = find_slides(slide_or_dir)
    if as_json:
        summary = preprocess_slides(slides, cfg, out, overwrite=overwrite)
        print_json({"out": str(out), **summary.to_dict()})
        raise typer.Exit(code=0 if summary.all_succeeded else 1)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("preprocess", total=len(slides))
        summary = preprocess_slides(
            slides, cfg, out, overwrite=overwrite, progress=lambda _record: progress.advance(task)
        )
    if len(slides) > 1 or not summary.failed:
        table = Table("slide", "status", "patches", "tissue contours", "seconds", title=f"preprocess → {out}")
        for record in summary.records:
            result = record.result
            table.add_row(
                record.slide.name,
                {"done": "[green]done[/green]", "skipped": "skipped (exists)", "failed": "[red]failed[/red]"}.get(
                    record.status, record.status
                ),
                "" if result is None else str(result.n_patches),
                "" if result is None else str(result.n_contours),
                f"{record.seconds:.2f}",
            )
        console.print(table)
    for record in summary.failed:
        console.print(f"[red]error:[/red] {record.detail}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code=0 if summary.all_succeeded else 1)
