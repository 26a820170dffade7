"""`make-demo-data` command: a small synthetic cohort (pyramidal .svs slides and labels.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sammil_deploy.cli.app import app, console, print_json
from sammil_deploy.cli.options import JsonOpt
from sammil_deploy.cli.render import progress_bar
from sammil_deploy.slide.cohort import DEFAULT_N_SLIDES, DEFAULT_SIZE_PX


@app.command("make-demo-data")
def make_demo_data_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the slides and labels.csv.")],
    n_slides: Annotated[int, typer.Option(help="Number of slides (>= 2); half carry tumour (label 1).")] = (
        DEFAULT_N_SLIDES
    ),
    seed: Annotated[int, typer.Option(help="Seed of the cohort (labels order and every slide).")] = 0,
    size_px: Annotated[int, typer.Option(help="Level-0 width of each slide in px (height is 0.8 of it).")] = (
        DEFAULT_SIZE_PX
    ),
    mpp: Annotated[float, typer.Option(help="Microns per level-0 pixel (0.25 ~ 40x).")] = 0.25,
    workers: Annotated[int | None, typer.Option(help="Threads per slide (default: CPU count, at most 8).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write synthetic H&E-like slides (tumour-bearing = label 1) and <out>/labels.csv for the demo."""
    from sammil_deploy.slide.cohort import make_demo_cohort, plan_demo_cohort

    plan_demo_cohort(n_slides, seed=seed, size_px=size_px, mpp=mpp)  # fail on bad arguments before the bar
    with progress_bar(percent=True, enabled=not as_json) as bar:
        task = bar.add_task("make-demo-data", total=n_slides)

        def on_tiles(index: int, slide_id: str, done: int, total: int) -> None:
            bar.update(task, completed=index + done / total, description=f"{slide_id} ({index + 1}/{n_slides})")

        cohort = make_demo_cohort(
            out, n_slides=n_slides, seed=seed, size_px=size_px, mpp=mpp, workers=workers, progress=on_tiles
        )
    described = cohort.to_dict()
    if as_json:
        print_json(described)
        return
    table = Table("slide", "label", "size (px)", "levels", "MB", "seconds", title=f"make-demo-data → {out}")
    for row in described["slides"]:
        table.add_row(
            row["slide_id"],
            str(row["label"]),
            f"{row['width_px']}x{row['height_px']}",
            str(row["levels"]),
            f"{row['megabytes']:.1f}",
            f"{row['seconds']:.2f}",
        )
    console.print(table)
    console.print(f"labels: {cohort.labels_csv}")
