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

SUMMARY_METRICS = ("auc", "accuracy", "f1")


@dataclass(frozen=True)
class Predictions:
    """Whole-bag predictions of a dataset: ``probs`` (n, C) float64, ``labels`` (n,) int64, mean CE ``loss``."""

    slide_ids: tuple[str, ...]
    labels: np.ndarray
    probs: np.ndarray
    loss: float


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
    probs, losses, ids = [], [], []
    try:
        for i in range(len(dataset)):
            bag = dataset[i]
            with autocast(device, amp):
                logits, _ = model(bag.tokens.to(device, non_blocking=True))
            logits = logits.float()
            losses.append(float(F.cross_entropy(logits[None], torch.tensor([bag.label], device=device))))
            probs.append(torch.softmax(logits, dim=0).double().cpu().numpy())
            ids.append(bag.slide_id)
    finally:
        model.train(was_training)
    n_classes = model.config.n_classes
    return Predictions(
        tuple(ids),
        np.asarray(dataset.labels, dtype=np.int64),
        np.stack(probs) if probs else np.zeros((0, n_classes)),
        float(np.mean(losses)) if losses else math.nan,
    )


def evaluate_predictions(pred: Predictions, *, threshold: float | None) -> dict[str, Any]:
    """Metrics of ``pred`` (AUC, accuracy, F1, ...) at ``threshold`` (binary) plus the mean CE loss."""
    return {**classification_metrics(pred.labels, pred.probs, threshold=threshold), "loss": pred.loss}


def summarise_folds(per_fold: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std"}}`` over folds (sample std) for AUC, accuracy and F1."""
    return {
        m: dict(zip(("mean", "std"), mean_std([float(f[m]) for f in per_fold]), strict=True))
        for m in SUMMARY_METRICS
        if all(m in f for f in per_fold)
    }


def write_predictions_csv(
    path: Path, pred: Predictions, class_names: Sequence[str], *, threshold: float | None, fold: str = ""
) -> Path:
    """Per-slide predictions: slide_id, fold, label, predicted class, one probability column per class."""
    if pred.probs.shape[1] == 2 and threshold is not None:
        predicted = (pred.probs[:, 1] >= threshold).astype(np.int64)
    else:
        predicted = pred.probs.argmax(axis=1)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide_id", "fold", "label", "predicted", *[f"prob_{c}" for c in class_names]])
        for sid, y, p, probs in zip(pred.slide_ids, pred.labels, predicted, pred.probs, strict=True):
            writer.writerow([sid, fold, class_names[y], class_names[p], *[f"{v:.6f}" for v in probs]])
    return path
