"""`benchmark`: latency and throughput per component and backend, as a table, JSON and markdown."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from sammil_deploy.cli.app import app, console, print_json
from sammil_deploy.cli.render import paths_line, wide_stdout

TABLE_WIDTH = 160


@app.command("benchmark")
def benchmark_cmd(
    suite: Annotated[
        str, typer.Option(help="Suite name (cpu-quick, gpu-full: benchmarks/suites/<name>.toml) or a suite .toml.")
    ] = "cpu-quick",
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write a markdown summary here.")] = None,
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated components to run: sam-encoder, mask-generation, resnet50, mil, reading, "
            "extraction, end-to-end."
        ),
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep exports and scratch files here (default: a temporary folder).")
    ] = None,
    machine: Annotated[
        str | None, typer.Option(help='Your name for this machine in the report (e.g. "2-core CPU dev machine").')
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results JSON on stdout instead of the table.")
    ] = False,
) -> None:
    """Time each component per backend and precision (warm-up, repeats, median/p90/p99, speed-up vs PyTorch eager)."""
    from sammil_deploy.bench.report import render_ratios, render_table, write_json, write_markdown
    from sammil_deploy.bench.run import run_suite
    from sammil_deploy.bench.suites import load_suite
    from sammil_deploy.io_atomic import check_writable

    config = load_suite(suite, only=tuple(only.split(",")) if only else None)
    for target in (out, markdown):
        if target is not None:
            check_writable(target.parent)  # before the run, not after it
    with console.status(f"benchmark {config.name}", spinner="dots") as status:

        def progress(message: str) -> None:
            status.update(f"benchmark {config.name}: {message}")

        started = [time.perf_counter()]

        def finished(component: str, rows: list) -> None:
            ok, seconds = sum(r.status == "ok" for r in rows), time.perf_counter() - started[0]
            started[0] = time.perf_counter()
            console.print(f"[green]done[/green] {component}: {ok}/{len(rows)} rows measured ({seconds:.0f} s)")

        report = run_suite(
            config, work_dir=work_dir, progress=progress, on_component=None if as_json else finished, machine=machine
        )
    if out is not None:
        write_json(report, out)
    if markdown is not None:
        write_markdown(report, markdown)
    if as_json:
        print_json(report.to_dict())
        return
    out_console = wide_stdout(TABLE_WIDTH)
    out_console.print(render_table(report))
    ratios = render_ratios(report)
    if ratios is not None:
        out_console.print(ratios)
    paths_line("results written to", out, markdown)
