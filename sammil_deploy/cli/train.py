"""`train`, `evaluate`, `import-checkpoint`, `import-bags` and `make-mil-table` commands (MIL training stage)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from sammil_deploy.cli.app import app, print_json, stdout
from sammil_deploy.cli.options import DeviceOpt, JsonOpt
from sammil_deploy.cli.render import progress_bar, wide_stdout

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from sammil_deploy.mil.events import OnTrainingEvent, TrainingEvent

ThresholdOpt = Annotated[
    str | None,
    typer.Option(help="Binary decision: youden (on held-out training-fold scores), 0.5, or a probability in (0, 1)."),
]


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
    device: DeviceOpt = None,
    seed: Annotated[int | None, typer.Option(help="Seed of training and splits.")] = None,
    threshold: ThresholdOpt = None,
    selection: Annotated[
        str | None,
        typer.Option(
            help="Epoch/threshold selection: validation | inner_cv | fixed | auto (inner_cv for small validation)."
        ),
    ] = None,
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
            "train.threshold": threshold,
            "train.selection": selection,
        },
    )
    check_device(recipe.train.device, option="--device" if device is not None else "train.device")
    with progress_bar(status=True, transient=False, enabled=not as_json) as progress:
        summary = train_cross_validation(
            features, labels, recipe, out, splits_path=splits, on_event=_progress_events(progress)
        )
    if as_json:
        print_json(summary.to_dict())
        return
    wide_stdout(160).print(summary_table(summary.folds, summary.mean_std))
    stdout.print(f"checkpoints and summary in {summary.out_dir}")


def _progress_events(progress: Progress) -> OnTrainingEvent:
    """The ``on_event`` callback of training: one bar per fold, epoch losses, then the fold's test metrics."""
    from sammil_deploy.mil.events import EpochEnd, FoldEnd, FoldStart

    tasks: dict[str, TaskID] = {}

    def on_event(event: TrainingEvent) -> None:
        match event:
            case FoldStart(fold=fold):
                sizes = f"{event.n_train}/{event.n_val}/{event.n_test}"
                tasks[fold] = progress.add_task(f"{fold} ({sizes})", total=event.epochs, status="")
            case EpochEnd(fold=fold, record=r):
                status = f"loss {r.train_loss:.4f}  val loss {r.val_loss:.4f}  val auc {r.val_auc:.4f}"
                progress.update(tasks[fold], advance=1, status=status + (" *" if r.improved else ""))
            case FoldEnd(fold=fold, metrics=m):
                status = (
                    f"test auc {m['auc']:.4f}  acc {m['accuracy']:.4f}  f1 {m['f1']:.4f}  "
                    f"(best epoch {event.best_epoch})"
                )
                progress.update(tasks[fold], total=event.epochs_run, completed=event.epochs_run, status=status)

    return on_event


def summary_table(folds: list[dict[str, Any]], mean_std: dict[str, dict[str, float]]) -> Table:
    """Per-fold test metrics, then mean ± std and mean ± SEM rows (accuracy at the chosen threshold and at 0.5)."""
    metrics = [m for m in ("auc", "accuracy", "accuracy_at_0.5", "f1", "f1_at_0.5") if m in mean_std]
    headers = {
        "auc": "AUC",
        "accuracy": "acc (thr)",
        "accuracy_at_0.5": "acc (0.5)",
        "f1": "F1",
        "f1_at_0.5": "F1 (0.5)",
    }
    table = Table(
        "fold", "selection", "epoch", *[headers[m] for m in metrics], "threshold P / margin",
        title="test folds (epoch and threshold chosen inside the training fold)",
    )  # fmt: skip
    for f in folds:
        thr = "" if f.get("threshold") is None else f"{f['threshold']:.4f} / {f['threshold_margin']:.3g}"
        row = [f"{f[m]:.4f}" for m in metrics]
        table.add_row(f["fold"], f.get("selection", ""), str(f["best_epoch"]), *row, thr)
    n = next(iter(mean_std.values()), {}).get("n", len(folds))
    for label, spread in ((f"mean ± std (n={n})", "std"), ("mean ± SEM", "sem")):
        table.add_row(label, "", "", *[f"{mean_std[m]['mean']:.4f} ± {mean_std[m][spread]:.4f}" for m in metrics], "")
    if all("sem_repeats" in mean_std[m] for m in metrics):
        cells = [f"{mean_std[m]['mean']:.4f} ± {mean_std[m]['sem_repeats']:.4f}" for m in metrics]
        table.add_row("mean ± SEM (repeats)", "", "", *cells, "")
    return table


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint .safetensors (with its .json).")],
    features: Annotated[Path, typer.Option(help="Folder of <slide_id>.h5 feature files.")],
    labels: Annotated[Path, typer.Option(help="CSV slide_id,label of the slides to evaluate.")],
    out: Annotated[Path, typer.Option(help="Output folder for predictions.csv and metrics.json.")],
    threshold: Annotated[
        str | None,
        typer.Option(
            help="Override the checkpoint's threshold: 0.5, a probability, or youden (chosen on THESE slides: "
            "optimistic)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a checkpoint on labelled slides at its recorded threshold (or --threshold)."""
    from sammil_deploy.mil.run import evaluate_checkpoint
    from sammil_deploy.mil.threshold import parse_threshold_option

    metrics = evaluate_checkpoint(checkpoint, features, labels, out, threshold_rule=parse_threshold_option(threshold))
    if as_json:
        print_json(metrics)
        return
    table = Table("metric", "value", title=f"{checkpoint.name} on {metrics['n']} slides")
    for key in ("auc", "accuracy", "accuracy_at_0.5", "f1", "threshold", "threshold_margin", "loss"):
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
    from sammil_deploy.mil.external import import_checkpoint

    names = tuple(c.strip() for c in class_names.split(",")) if class_names else None
    ckpt = import_checkpoint(
        source, out, feature_dim=feature_dim, encoder=encoder, activation=activation, class_names=names
    )
    meta = ckpt.meta
    if as_json:
        print_json({"source": meta.source, "model": meta.model, "group_tokens": meta.group_tokens,
                    "checkpoint": str(ckpt.path)})  # fmt: skip
        return
    stdout.print(f"imported {meta.source} model ({meta.model}) -> {ckpt.path}")


@app.command("import-bags")
def import_bags_cmd(
    table: Annotated[Path, typer.Argument(help="Instance table: .csv (.tsv), .parquet or .npz, one row per instance.")],
    out: Annotated[Path, typer.Option(help="Output folder: <bag_id>.h5 per bag and labels.csv.")],
    bag_column: Annotated[str, typer.Option(help="Column of the bag id (CSV/Parquet).")] = "bag_id",
    label_column: Annotated[str, typer.Option(help="Column of the bag label (CSV/Parquet).")] = "label",
    ignore: Annotated[
        list[str] | None, typer.Option(help="Non-feature columns to skip (repeatable), e.g. an instance name.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Turn a table of (bag id, label, instance features) into feature files that `train` reads."""
    from sammil_deploy.mil.bag_import import import_bags, read_instance_table

    instances = read_instance_table(
        table, bag_column=bag_column, label_column=label_column, ignore_columns=ignore or ()
    )
    done = import_bags(instances, out, overwrite=overwrite)
    if as_json:
        print_json(done.to_dict())
        return
    classes = ", ".join(f"{k}: {v}" for k, v in done.class_counts.items())
    stdout.print(
        f"{done.n_bags} bags ({classes}), {done.n_instances} instances of {done.dim} features, bag sizes "
        f"{done.bag_size_min}-{done.bag_size_max} -> {done.out_dir}\n"
        f"train with: sammil-deploy train --features {done.out_dir} --labels {done.labels_csv} --model abmil ..."
    )


@app.command("make-mil-table")
def make_mil_table_cmd(
    out: Annotated[Path, typer.Option(help="CSV to write (bag_id,label,f0..f<D-1>).")],
    bags: Annotated[int, typer.Option(help="Number of bags (balanced labels).")] = 92,
    dim: Annotated[int, typer.Option(help="Instance feature dimension.")] = 166,
    signal: Annotated[float, typer.Option(help="Witness shift along the hidden direction (larger is easier).")] = 4.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a synthetic MUSK-shaped MIL table (bags of 2-40 instances) to try import-bags and the MIL recipe."""
    from sammil_deploy.mil.synthetic import write_mil_table

    n_instances = write_mil_table(out, n_bags=bags, dim=dim, signal=signal, seed=seed)
    stdout.print(f"{bags} bags, {n_instances} instances of {dim} features -> {out}")
