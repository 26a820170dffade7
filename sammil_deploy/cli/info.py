"""`version`, `doctor` and `slide-info` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sammil_deploy import __version__
from sammil_deploy.cli.app import app, print_json, stdout


@app.command("version")
def version_cmd() -> None:
    """Print the toolkit version."""
    stdout.print(f"sammil-deploy {__version__}")


@app.command("doctor")
def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what is installed: torch, CUDA, onnxruntime providers, TensorRT, OpenSlide."""
    from sammil_deploy.environment import PACKAGES, capture_environment

    report = capture_environment()
    if as_json:
        print_json(report)
        return
    table = Table("component", "status", title="sammil-deploy doctor")
    for key, value in report.items():
        missing = "[red]not installed[/red]" if key in PACKAGES else "-"
        table.add_row(key, missing if value is None else str(value))
    stdout.print(table)


@app.command("slide-info")
def slide_info_cmd(
    slide: Annotated[Path, typer.Argument(help="Slide file (.svs, .tif, .ndpi, .mrxs, ...).")],
    mpp: Annotated[float | None, typer.Option(help="Microns per level-0 pixel, if the file has none.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show a slide's levels, downsamples, mpp and objective power."""
    from sammil_deploy.slide import open_slide

    with open_slide(slide, mpp=mpp) as reader:
        info = reader.info
    payload = {
        "path": str(info.path),
        "vendor": info.vendor,
        "dimensions_wh": info.dimensions_wh,
        "level_count": info.level_count,
        "level_dimensions_wh": info.level_dimensions_wh,
        "level_downsamples": info.level_downsamples,
        "mpp": info.mpp,
        "mpp_source": info.mpp_source,
        "objective_power": info.objective_power,
    }
    if as_json:
        print_json(payload)
        return
    stdout.print(
        f"[bold]{info.path.name}[/bold]  vendor={info.vendor}  mpp={info.mpp} ({info.mpp_source})  "
        f"objective={info.objective_power}"
    )
    table = Table("level", "width", "height", "downsample")
    for level, ((w, h), ds) in enumerate(zip(info.level_dimensions_wh, info.level_downsamples, strict=True)):
        table.add_row(str(level), str(w), str(h), f"{ds:.3f}")
    stdout.print(table)
