"""`train`, `evaluate` and `import-checkpoint` commands (MIL training stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sammil_deploy.cli.app import app, console, print_json, stdout

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


@app.command("train")
def train_cmd(
    features: Annotated[Path, typer.Option(help="Folder of <slide_id>.h5 feature files.")],
    labels: Annotated[Path, typer.Option(help="CSV slide_id,label (header optional; names or integers).")],
    out: Annotated[Path, typer.Option(help="Output folder for checkpoints, logs and the summary.")],
    splits: Annotated[
        Path | None,
        typer.Option(
            help="Splits CSV (slide_id,fold,split or CLAM train,val,test) or a folder of CLAM splits_<k>.csv."
        ),
    ] = None,
    folds: Annotated[int | None, typer.Option(help="Stratified K-fold when no --splits (default 5).")] = None,
    repeats: Annotated[int | None, typer.Option(help="Repeats of the K-fold with new shuffles.")] = None,
    model: Annotated[
        str | None, typer.Option(help="sammil | abmil | abmil-gated | mean | max (default: the recipe's, sammil).")
    ] = None,
    objective: Annotated[str | None, typer.Option(help="paper (Eq. 13) | official (released code's loss).")] = None,
    config: Annotated[Path | None, typer.Option(help="Recipe TOML (training/*.toml); flags override it.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of training and splits.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train SAM-MIL (or a baseline) with cross-validation: one checkpoint per fold plus a summary."""
    from sammil_deploy.mil.config import load_recipe
    from sammil_deploy.mil.run import train_cross_validation
    from sammil_deploy.runtime.devices import check_device

    recipe = load_recipe(
        config,
        preset=model,
        overrides={
            "sammil.objective": objective,
            "data.folds": folds,
            "data.repeats": repeats,
            "train.epochs": epochs,
            "train.device": device,
            "train.seed": seed,
            "data.seed": seed,
        },
    )
    check_device(recipe.train.device, option="--device" if device is not None else "train.device")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=as_json,
    ) as progress:
        tasks: dict[str, Any] = {}

        def on_event(kind: str, payload: dict[str, Any]) -> None:
            if kind == "fold_start":
                tasks[payload["fold"]] = progress.add_task(
                    f"{payload['fold']} ({payload['n_train']}/{payload['n_val']}/{payload['n_test']})",
                    total=payload["epochs"],
                    status="",
                )
            elif kind == "epoch":
                r = payload["record"]
                progress.update(
                    tasks[payload["fold"]],
                    advance=1,
                    status=(
                        f"loss {r.train_loss:.4f}  val loss {r.val_loss:.4f}  val auc {r.val_auc:.4f}"
                        + (" *" if r.improved else "")
                    ),
                )
            elif kind == "fold_end":
                task = tasks[payload["fold"]]
                progress.update(
                    task,
                    total=payload["epochs_run"],
                    completed=payload["epochs_run"],
                    status=f"test auc {payload['auc']:.4f}  acc {payload['accuracy']:.4f}  "
                    f"f1 {payload['f1']:.4f}  (best epoch {payload['best_epoch']})",
                )

        summary = train_cross_validation(features, labels, recipe, out, splits_path=splits, on_event=on_event)
    if as_json:
        print_json(
            {
                "folds": summary.folds,
                "mean_std": summary.mean_std,
                "checkpoints": [str(p) for p in summary.checkpoints],
                "out_dir": str(summary.out_dir),
            }
        )
        return
    table = Table(
        "fold",
        "best epoch",
        "AUC",
        "accuracy",
        "F1",
        "threshold",
        title="test folds (epoch and threshold chosen on validation)",
    )
    for f in summary.folds:
        thr = "" if f.get("threshold") is None else f"{f['threshold']:.4f}"
        table.add_row(f["fold"], str(f["best_epoch"]), f"{f['auc']:.4f}", f"{f['accuracy']:.4f}", f"{f['f1']:.4f}", thr)
    ms = summary.mean_std
    table.add_row(
        "mean ± std", "", *[f"{ms[m]['mean']:.4f} ± {ms[m]['std']:.4f}" for m in ("auc", "accuracy", "f1")], ""
    )
    stdout.print(table)
    stdout.print(f"checkpoints and summary in {summary.out_dir}")


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint .safetensors (with its .json).")],
    features: Annotated[Path, typer.Option(help="Folder of <slide_id>.h5 feature files.")],
    labels: Annotated[Path, typer.Option(help="CSV slide_id,label of the slides to evaluate.")],
    out: Annotated[Path, typer.Option(help="Output folder for predictions.csv and metrics.json.")],
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a checkpoint on labelled slides at its validation threshold."""
    from sammil_deploy.mil.run import evaluate_checkpoint

    metrics = evaluate_checkpoint(checkpoint, features, labels, out)
    if as_json:
        print_json(metrics)
        return
    table = Table("metric", "value", title=f"{checkpoint.name} on {metrics['n']} slides")
    for key in ("auc", "accuracy", "f1", "threshold", "loss"):
        if metrics.get(key) is not None:
            table.add_row(key, f"{metrics[key]:.4f}")
    stdout.print(table)


@app.command("import-checkpoint")
def import_checkpoint_cmd(
    source: Annotated[Path, typer.Argument(help="Official SAM-MIL / AB-MIL or CLAM_SB .pt/.pth state dict.")],
    out: Annotated[Path, typer.Option(help="Output checkpoint path (x.safetensors; x.json is written too).")],
    feature_dim: Annotated[int | None, typer.Option(help="Refuse the import unless the input dim is this.")] = None,
    encoder: Annotated[str | None, typer.Option(help="Feature extractor id to record.")] = "resnet50_trunc",
    activation: Annotated[str | None, typer.Option(help="Attention activation override (relu | tanh).")] = None,
    class_names: Annotated[
        str | None, typer.Option(help="Comma-separated class of each logit (default 0,1,...).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert a checkpoint trained with the official SAM-MIL code or CLAM into a sammil-deploy checkpoint."""
    from sammil_deploy.mil.checkpoint import import_external_checkpoint, save_checkpoint

    names = tuple(c.strip() for c in class_names.split(",")) if class_names else None
    ckpt = import_external_checkpoint(
        source, feature_dim=feature_dim, encoder=encoder, activation=activation, class_names=names
    )
    path = save_checkpoint(out, ckpt.model, ckpt.meta)
    payload = {
        "source": ckpt.meta.source,
        "model": ckpt.meta.model,
        "group_tokens": ckpt.meta.group_tokens,
        "checkpoint": str(path),
    }
    if as_json:
        print_json(payload)
        return
    stdout.print(f"imported {ckpt.meta.source} model ({ckpt.meta.model}) -> {path}")
