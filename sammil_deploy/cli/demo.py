"""`demo`: the whole story on a synthetic cohort, on the CPU, in minutes (the README's first command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sammil_deploy.cli.app import app, console, print_json
from sammil_deploy.cli.options import JsonOpt
from sammil_deploy.cli.render import wide_stdout

TABLE_WIDTH = 140


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo folder (created; rerunning reuses finished stages).")],
    quick: Annotated[bool, typer.Option("--quick", help="8 smaller slides and 5 epochs: about half the time.")] = False,
    no_benchmark: Annotated[bool, typer.Option("--no-benchmark", help="Skip the benchmark stage.")] = False,
    sam: Annotated[
        bool,
        typer.Option(
            "--sam",
            help="Segment with a tiny SAM with RANDOM weights (masks not meaningful) instead of the fallback, export "
            "it into the bundle and run the SAM chain in infer (ONNX Runtime). Use a fresh --out folder.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make data, extract, train SAM-MIL and AB-MIL, export ONNX, infer held-out slides, benchmark; show where."""
    from sammil_deploy.demo import DemoConfig, run_demo
    from sammil_deploy.demo.sam import NOTICE

    options = {"benchmark": not no_benchmark, "sam": sam}
    cfg = DemoConfig.quick(**options) if quick else DemoConfig(**options)
    segmenter = "a tiny SAM" if sam else "the fallback segmenter"
    console.print(
        f"[yellow]demo:[/yellow] synthetic slides, {segmenter} and a ResNet50 with RANDOM weights: the "
        "numbers show the machinery working, not pathology accuracy",
        highlight=False,
    )
    if sam:
        console.print(f"[yellow]demo:[/yellow] {NOTICE}", highlight=False)
    with console.status("demo", spinner="dots") as status:

        def progress(stage: str, message: str) -> None:
            status.update(f"demo {stage}: {message}")
            if message in ("running", "reusing earlier output"):
                console.print(f"[cyan]{stage}[/cyan]: {message}", highlight=False)

        result = run_demo(out, cfg, progress=progress)
    if as_json:
        print_json(result.to_dict())
        return
    table = Table("stage", "status", "seconds", "artifacts", title=f"demo in {result.out_dir}", title_justify="left")
    for stage in result.stages:
        table.add_row(
            stage.name, stage.status, f"{stage.seconds:.1f}", "\n".join(f"{k}: {v}" for k, v in stage.artifacts.items())
        )
    out = wide_stdout(TABLE_WIDTH)
    out.print(table)
    m = result.metrics
    auc = {k: m.get(f"{k}_cv_test_auc") or {} for k in ("sammil", "abmil")}
    out.print(
        "cross-validated test AUC (random-weight features): "
        + ", ".join(f"{k} {v.get('mean', float('nan')):.3f} ± {v.get('std', float('nan')):.3f}" for k, v in auc.items())
    )
    for slide, pred in m.get("held_out", {}).items():
        probs = {b: pred[b]["probabilities"] for b in ("torch", "onnxruntime") if b in pred}
        shown = "; ".join(f"{b}: " + ", ".join(f"{c} {p:.3f}" for c, p in ps.items()) for b, ps in probs.items())
        out.print(f"held-out {slide} (label {pred['label']}): {shown}")
    for key, sam_run in m.get("sam", {}).items():
        seconds = ", ".join(f"{k} {v:.2f} s" for k, v in sam_run["seconds"].items())
        out.print(
            f"SAM (random weights) {key}: {sam_run['masks']} masks, {sam_run['segments']} groups, "
            f"{sam_run['encoder_passes']} encoder passes, {sam_run['decoder_prompts']} prompts; {seconds}"
        )
    if m.get("torch_vs_onnxruntime_max_prob_diff") is not None:
        out.print(f"torch vs onnxruntime: max probability difference {m['torch_vs_onnxruntime_max_prob_diff']:.2e}")
    for backend, page in m.get("cohort_reports", {}).items():
        out.print(f"cohort report ({backend}): {page}", highlight=False, soft_wrap=True)
    out.print(f"summary: {result.out_dir / 'demo_summary.json'}")
