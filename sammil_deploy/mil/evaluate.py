"""Evaluation: whole-bag predictions, metrics at the validation threshold, per-fold and mean ± std summaries."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sammil_deploy.io_atomic import atomic_path
from sammil_deploy.mil.data import BagDataset
from sammil_deploy.mil.metrics import classification_metrics, mean_std
from sammil_deploy.mil.model import MilHead
from sammil_deploy.mil.threshold import Threshold, margins_from_logits, margins_from_probs

# Binary tasks also get accuracy and F1 at P(1) >= 0.5 next to those at the chosen threshold.
SUMMARY_METRICS = ("auc", "accuracy", "accuracy_at_0.5", "f1", "f1_at_0.5")


@dataclass(frozen=True)
class Predictions:
    """Whole-bag predictions: ``probs`` and ``logits`` (n, C) float64, ``labels`` (n,) int64, mean CE ``loss``."""

    slide_ids: tuple[str, ...]
    labels: np.ndarray
    probs: np.ndarray
    loss: float
    logits: np.ndarray | None = None

    @property
    def margins(self) -> np.ndarray:
        """(n,) binary logit margins ``logit_1 - logit_0`` (from the logits; from probs if there are none)."""
        return margins_from_logits(self.logits) if self.logits is not None else margins_from_probs(self.probs)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CPU, fp16 on CUDA; a no-op context when disabled."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def predict(
    model: MilHead, dataset: BagDataset, *, device: torch.device | str = "cpu", amp: bool = False
) -> Predictions:
    """Run the model in eval mode on every whole bag (patches + group tokens when the dataset adds them)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    probs, logits_all, losses, ids = [], [], [], []
    try:
        for i in range(len(dataset)):
            bag = dataset[i]
            with autocast(device, amp):
                logits, _ = model(bag.tokens.to(device, non_blocking=True))
            logits = logits.float()
            losses.append(float(F.cross_entropy(logits[None], torch.tensor([bag.label], device=device))))
            probs.append(torch.softmax(logits, dim=0).double().cpu().numpy())
            logits_all.append(logits.double().cpu().numpy())
            ids.append(bag.slide_id)
    finally:
        model.train(was_training)
    n_classes = model.config.n_classes
    return Predictions(
        tuple(ids),
        np.asarray(dataset.labels, dtype=np.int64),
        np.stack(probs) if probs else np.zeros((0, n_classes)),
        float(np.mean(losses)) if losses else math.nan,
        np.stack(logits_all) if logits_all else np.zeros((0, n_classes)),
    )


def evaluate_predictions(pred: Predictions, *, threshold: Threshold | None) -> dict[str, Any]:
    """Metrics of ``pred`` (AUC, accuracy, F1, ...) at ``threshold`` (binary, on the margin) plus the mean CE loss."""
    margins = pred.margins if pred.probs.shape[1] == 2 else None
    metrics = classification_metrics(pred.labels, pred.probs, threshold=threshold, margins=margins)
    return {**metrics, "loss": pred.loss}


def summarise_folds(per_fold: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "sem", "n"}}`` over folds for AUC, accuracy (and at 0.5) and F1 (and at 0.5).

    ``std`` is the sample std over all folds of all repeats and ``sem`` = std / sqrt(n). Folds of one K-fold
    share training bags, so this SEM is optimistic; with repeats, ``sem_repeats`` is the SEM of the per-repeat
    means (the spread a rerun on new shuffles would show).
    """
    out = {}
    for m in SUMMARY_METRICS:
        if not all(m in f for f in per_fold):
            continue
        values = [float(f[m]) for f in per_fold]
        mean, std = mean_std(values)
        n = sum(not math.isnan(v) for v in values)
        stats = {"mean": mean, "std": std, "sem": std / math.sqrt(n) if n else math.nan, "n": n}
        repeats = _per_repeat_means(per_fold, m)
        if len(repeats) > 1:
            stats["sem_repeats"] = mean_std(repeats)[1] / math.sqrt(len(repeats))
        out[m] = stats
    return out


def _per_repeat_means(per_fold: Sequence[dict[str, Any]], metric: str) -> list[float]:
    """Mean of ``metric`` per repeat (fold names ``repeat<r>_fold<k>``; one group when there are no repeats)."""
    groups: dict[str, list[float]] = {}
    for f in per_fold:
        name = str(f.get("fold", ""))
        groups.setdefault(name.partition("_fold")[0] if name.startswith("repeat") else "", []).append(float(f[metric]))
    return [mean_std(v)[0] for v in groups.values()]


def write_predictions_csv(
    path: Path, pred: Predictions, class_names: Sequence[str], *, threshold: Threshold | None, fold: str = ""
) -> Path:
    """Per-slide predictions: slide_id, fold, label, predicted class, class probabilities (and binary margin)."""
    binary = pred.probs.shape[1] == 2
    if binary and threshold is not None:
        predicted = threshold.decide(pred.margins).astype(np.int64)
    else:
        predicted = pred.probs.argmax(axis=1)
    margins = pred.margins if binary else np.full(len(predicted), np.nan)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        margin_col = ["margin"] if binary else []
        writer.writerow(["slide_id", "fold", "label", "predicted", *[f"prob_{c}" for c in class_names], *margin_col])
        for sid, y, p, probs, m in zip(pred.slide_ids, pred.labels, predicted, pred.probs, margins, strict=True):
            extra = [f"{m:.6f}"] if binary else []
            writer.writerow([sid, fold, class_names[y], class_names[p], *[f"{v:.6f}" for v in probs], *extra])
    return path
