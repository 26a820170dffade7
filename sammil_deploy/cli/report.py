"""`report`: (re)build the cohort page ``report.html`` of an ``infer`` output folder; optionally screenshot it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sammil_deploy.cli.app import app, print_json, stdout
from sammil_deploy.cli.options import JsonOpt


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Output folder of `sammil-deploy infer` (holds summary.csv).")],
    screenshot: Annotated[
        Path | None, typer.Option(help="Also save a PNG of the page, rendered by a local headless Chromium.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write RUN_DIR/report.html: settings, per-slide table, heatmaps, segments, top patches, stage times."""
    from sammil_deploy.viz.cohort_report import write_cohort_report

    path = write_cohort_report(run_dir)
    shot = None
    if screenshot is not None:
        from sammil_deploy.viz.browser import screenshot_report

        shot = screenshot_report(path, screenshot)
    if as_json:
        print_json({"report": str(path), "screenshot": None if shot is None else str(shot)})
        return
    stdout.print(f"report: {path}", highlight=False, soft_wrap=True)
    if shot is not None:
        stdout.print(f"screenshot: {shot}", highlight=False, soft_wrap=True)
