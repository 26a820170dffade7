"""Cross-validated training and checkpoint evaluation: what `sammil-deploy train` / `evaluate` call.

Per fold: fit on the training slides, pick the epoch and the decision threshold without the test slides (the
validation split, an inner cross-validation, or fixed epochs: :mod:`.selection`), then evaluate once on the
test slides. Outputs in ``out_dir``: ``<fold>.safetensors`` + ``<fold>.json`` checkpoints,
``<fold>/log.csv|json``, ``predictions.csv`` (test slides of every fold), ``summary.json`` and ``summary.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sammil_deploy.config import to_dict
from sammil_deploy.errors import ConfigError
from sammil_deploy.features.bag import FeatureBag
from sammil_deploy.io_atomic import atomic_path, write_text
from sammil_deploy.mil.checkpoint import load_checkpoint, make_meta, save_checkpoint
from sammil_deploy.mil.config import TrainRecipe, with_data_shape
from sammil_deploy.mil.data import BagDataset, Labels, Split, find_feature_files, make_splits, read_labels, read_splits
from sammil_deploy.mil.evaluate import (
    SUMMARY_METRICS,
    Predictions,
    evaluate_predictions,
    predict,
    summarise_folds,
    write_predictions_csv,
)
from sammil_deploy.mil.events import EpochEnd, FoldEnd, FoldStart, OnTrainingEvent, TrainingEvent
from sammil_deploy.mil.fit import EpochRecord
from sammil_deploy.mil.selection import fit_fold, resolve_selection
from sammil_deploy.mil.threshold import Threshold, choose_threshold, threshold_fields
from sammil_deploy.runtime.devices import resolve_device


@dataclass(frozen=True)
class CvSummary:
    """Per-fold test metrics, their mean ± std, and where everything was written."""

    folds: list[dict[str, Any]]
    mean_std: dict[str, dict[str, float]]
    out_dir: Path
    checkpoints: list[Path]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``train --json`` prints)."""
        return {
            "folds": self.folds,
            "mean_std": self.mean_std,
            "checkpoints": [str(p) for p in self.checkpoints],
            "out_dir": str(self.out_dir),
        }


def train_cross_validation(
    features_dir: Path,
    labels_csv: Path,
    recipe: TrainRecipe,
    out_dir: Path,
    *,
    splits_path: Path | None = None,
    on_event: OnTrainingEvent | None = None,
    bags: Sequence[FeatureBag] | None = None,
) -> CvSummary:
    """Train one model per fold and evaluate it on that fold's test slides.

    Args:
        features_dir: Folder of ``<slide_id>.h5`` feature files (ignored when ``bags`` is given).
        labels_csv: ``slide_id,label`` CSV.
        recipe: Model / objective / loop / split configs; the feature dim and class count come from the data.
        out_dir: Output folder (created).
        splits_path: Splits CSV or folder of CLAM ``splits_<k>.csv``; otherwise stratified K-fold.
        on_event: Progress callback: :class:`~.events.FoldStart`, :class:`~.events.EpochEnd` per epoch,
            :class:`~.events.FoldEnd` (typed events of :mod:`sammil_deploy.mil.events`).
        bags: In-memory bags instead of files (programmatic use, tests).

    Raises:
        ConfigError, FeatureStoreError, CheckpointError: Bad inputs, with the file and the fix.
    """
    labels = read_labels(labels_csv, class_names=recipe.data.class_names)
    splits = _splits(recipe, labels, splits_path)
    sources = _sources(features_dir, labels, bags)
    first = sources[labels.slide_ids[0]]
    probe = first if isinstance(first, FeatureBag) else _read(first)
    recipe = with_data_shape(recipe, in_dim=probe.dim, n_classes=len(labels.class_names))
    extractor = probe.attrs.get("encoder")
    y = labels.as_dict()
    provenance = {
        "labels_sha256": _sha256_file(labels_csv),
        "splits_sha256": _sha256_file(splits_path) if splits_path and splits_path.is_file() else None,
    }

    shared: dict[str, Any] | None = {} if recipe.train.cache_bags else None  # each bag is read once per run

    def dataset(ids: Sequence[str]) -> BagDataset:
        return BagDataset(
            [sources[s] for s in ids],
            [y[s] for s in ids],
            group_tokens=recipe.sammil.group_tokens,
            needs_context=recipe.sammil.needs_context,
            cache=recipe.train.cache_bags,
            shared_cache=shared,
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    fold_run = _FoldRun(recipe, labels.class_names, y, dataset, out_dir, extractor, provenance, on_event)
    per_fold, checkpoints, all_preds = [], [], []
    for split in splits:
        metrics, checkpoint, test, threshold = fold_run(split)
        checkpoints.append(checkpoint)
        all_preds.append((split.name, test, threshold))
        per_fold.append(metrics)
    summary = CvSummary(per_fold, summarise_folds(per_fold), out_dir, checkpoints)
    _write_summary(summary, recipe, splits, all_preds, labels.class_names)
    return summary


@dataclass(frozen=True)
class _FoldRun:
    """Train, select, test and save one outer fold (the body of :func:`train_cross_validation`)."""

    recipe: TrainRecipe
    class_names: tuple[str, ...]
    y: dict[str, int]
    dataset: Callable[[Sequence[str]], BagDataset]
    out_dir: Path
    extractor: str | None
    provenance: dict[str, Any]
    on_event: OnTrainingEvent | None

    def __call__(self, split: Split) -> tuple[dict[str, Any], Path, Predictions, Threshold | None]:
        recipe, name = self.recipe, split.name
        train_ds, val_ds, test_ds = self.dataset(split.train), self.dataset(split.val), self.dataset(split.test)
        mode = resolve_selection(recipe, len(val_ds))
        epochs = recipe.train.epochs * (recipe.train.inner_folds + 1 if mode == "inner_cv" else 1)
        self._emit(FoldStart(name, len(train_ds), len(val_ds), len(test_ds), epochs, mode))
        fold = fit_fold(
            recipe,
            split,
            self.dataset,
            self.y,
            log_dir=self.out_dir / name,
            on_epoch=lambda r: self._emit(EpochEnd(name, r)),
        )
        result = fold.result
        device = resolve_device(recipe.train.device, option="train.device")
        test = predict(result.model, test_ds, device=device, amp=recipe.train.amp)
        metrics = {
            "fold": name,
            "selection": fold.selection,
            "best_epoch": result.best_epoch,
            "epochs_run": fold.epochs_trained,
            **evaluate_predictions(test, threshold=result.threshold),
        }
        meta = make_meta(
            recipe.model,
            class_names=self.class_names,
            group_tokens=recipe.sammil.group_tokens,
            feature_extractor=self.extractor,
            **threshold_fields(result.threshold),
            metrics=metrics,
            sammil={"sammil": to_dict(recipe.sammil), "train": to_dict(recipe.train)},
            data={
                **self.provenance,
                "fold": name,
                "train_sha256": train_ds.fingerprint(),
                "val_sha256": val_ds.fingerprint(),
                "test_sha256": test_ds.fingerprint(),
            },
        )
        checkpoint = save_checkpoint(self.out_dir / name, result.model, meta)
        write_predictions_csv(
            self.out_dir / name / "predictions.csv", test, self.class_names, threshold=result.threshold, fold=name
        )
        self._emit(FoldEnd(name, fold.epochs_trained, result.best_epoch, metrics))
        return metrics, checkpoint, test, result.threshold

    def _emit(self, event: TrainingEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)


def evaluate_checkpoint(
    checkpoint: Path, features_dir: Path, labels_csv: Path, out_dir: Path, *, threshold_rule: str | None = None
) -> dict[str, Any]:
    """Evaluate a checkpoint on every labelled slide of a feature folder at the checkpoint's threshold.

    ``threshold_rule`` (``youden`` | ``0.5`` | a probability) overrides it; ``youden`` then picks the threshold on
    these very slides, which is optimistic (say so when you report it). Writes ``predictions.csv`` and
    ``metrics.json`` in ``out_dir`` and returns the metrics.
    """
    ckpt = load_checkpoint(checkpoint)
    files = find_feature_files(features_dir, read_labels(labels_csv).slide_ids)
    ckpt.check_feature_dim(_read(next(iter(files.values()))).dim, source=f"features in {features_dir}")
    labels = read_labels(labels_csv, class_names=ckpt.meta.class_names)
    ds = BagDataset(
        [files[s] for s in labels.slide_ids],
        labels.y.tolist(),
        group_tokens=ckpt.meta.group_tokens,
        needs_context=ckpt.meta.group_tokens,
        cache=False,
    )
    pred = predict(ckpt.model, ds)
    threshold = ckpt.meta.decision_threshold
    if threshold_rule is not None and len(labels.class_names) == 2:
        threshold = choose_threshold(threshold_rule, pred.labels == 1, pred.margins)
    metrics = {"checkpoint": str(checkpoint), **evaluate_predictions(pred, threshold=threshold)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions_csv(out_dir / "predictions.csv", pred, labels.class_names, threshold=threshold)
    _write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=str))
    return metrics


def _splits(recipe: TrainRecipe, labels: Labels, splits_path: Path | None) -> list[Split]:
    """The user's splits file, else stratified K-fold (``data.folds`` x ``data.repeats``)."""
    data = recipe.data
    if splits_path is not None:
        return read_splits(splits_path, labels, val_fraction=data.val_fraction, seed=data.seed)
    return make_splits(labels, folds=data.folds, repeats=data.repeats, val_fraction=data.val_fraction, seed=data.seed)


def _sources(features_dir: Path, labels: Labels, bags: Sequence[FeatureBag] | None) -> dict[str, Any]:
    if bags is None:
        return dict(find_feature_files(features_dir, labels.slide_ids))
    by_id = {b.slide_id: b for b in bags}
    missing = [s for s in labels.slide_ids if s not in by_id]
    if missing:
        raise ConfigError(f"no bag for labelled slides {', '.join(missing[:3])}")
    return by_id


def _read(path: Path) -> FeatureBag:
    from sammil_deploy.features.store import read_bag

    return read_bag(path)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _write_text(path: Path, text: str) -> None:
    write_text(path, text)


def _write_summary(
    summary: CvSummary,
    recipe: TrainRecipe,
    splits: Sequence[Split],
    preds: Sequence[tuple[str, Predictions, Threshold | None]],
    class_names: Sequence[str],
) -> None:
    out = summary.out_dir
    payload = {
        "protocol": f"epoch and threshold chosen by train.selection = {recipe.train.selection!r} inside each "
        "training fold; test fold used once (the official SAM-MIL code uses validation = test)",
        "recipe": to_dict(recipe),
        "folds": summary.folds,
        "mean_std": summary.mean_std,
        "splits": [dataclasses.asdict(s) for s in splits],
        "checkpoints": [str(p) for p in summary.checkpoints],
    }
    _write_text(out / "summary.json", json.dumps(payload, indent=2, default=str))
    metric_cols = list(SUMMARY_METRICS)
    columns = ["fold", "selection", "best_epoch", "epochs_run", "n", *metric_cols, "threshold", "threshold_margin"]
    rows = [[f.get(c, "") for c in columns] for f in summary.folds]
    for stat in ("mean", "std", "sem"):
        values = [summary.mean_std.get(c, {}).get(stat, "") for c in metric_cols]
        rows.append([stat, "", "", "", "", *values, "", ""])
    with atomic_path(out / "summary.csv") as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([columns, *rows])
    with atomic_path(out / "predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide_id", "fold", "label", *[f"prob_{c}" for c in class_names]])
        for fold, pred, _ in preds:
            for sid, y, p in zip(pred.slide_ids, pred.labels, pred.probs, strict=True):
                writer.writerow([sid, fold, class_names[y], *[f"{v:.6f}" for v in p]])


__all__ = ["CvSummary", "EpochRecord", "evaluate_checkpoint", "train_cross_validation"]
