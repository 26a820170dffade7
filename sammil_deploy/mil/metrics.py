"""Classification metrics in numpy (no sklearn): ROC AUC, Youden threshold, accuracy, F1."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def roc_auc_binary(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class is absent.

    Args:
        y_true: (n,) 0/1 labels.
        score: (n,) scores, higher = more likely positive.
    """
    y = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUC on probs[:, 1] for two classes, else the macro mean of one-vs-rest AUCs of present classes.

    Args:
        y_true: (n,) int class indices.
        probs: (n, C) class probabilities.
    """
    y = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        return roc_auc_binary(y == 1, probs[:, 1])
    aucs = [roc_auc_binary(y == c, probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else math.nan


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, thresholds descending (prediction = score >= thr).

    The first point is (0, 0) at threshold +inf.
    """
    y = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="stable")
    s, y = score[order], y[order]
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[last_of_run]]


def youden_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """Score threshold maximising Youden's J = tpr - fpr (first, i.e. highest, threshold on ties).

    Returns 0.5 when a class is missing (J is undefined).
    """
    y = np.asarray(y_true).astype(bool)
    if y.all() or (~y).all():
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, score)
    j = tpr - fpr
    best = int(np.argmax(j >= j.max() - 1e-12))  # first (highest) threshold among float-equal maxima
    return float(min(thresholds[best], 1.0))


def f1_binary(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of the positive class (0 when there is no positive prediction and no positive label)."""
    y, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp = int((y & p).sum())
    denom = 2 * tp + int((~y & p).sum()) + int((y & ~p).sum())
    return 2.0 * tp / denom if denom else 0.0


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, *, threshold: float | None = None) -> dict[str, Any]:
    """AUC, accuracy and F1 of class probabilities.

    Binary: predictions are probs[:, 1] >= ``threshold`` (0.5 if None); F1 of class 1, plus precision and
    recall. Multi-class: argmax predictions and macro F1 over the classes.

    Args:
        y_true: (n,) int class indices.
        probs: (n, C) class probabilities.
        threshold: Decision threshold for binary tasks (the validation Youden threshold).
    """
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    out: dict[str, Any] = {"n": int(len(y)), "auc": roc_auc(y, probs)}
    if probs.shape[1] == 2:
        thr = 0.5 if threshold is None else float(threshold)
        pred = (probs[:, 1] >= thr).astype(np.int64)
        tp = int(((pred == 1) & (y == 1)).sum())
        out.update(
            threshold=thr,
            f1=f1_binary(y == 1, pred == 1),
            precision=tp / max(int((pred == 1).sum()), 1),
            recall=tp / max(int((y == 1).sum()), 1),
        )
    else:
        pred = probs.argmax(axis=1)
        out["f1"] = float(np.mean([f1_binary(y == c, pred == c) for c in range(probs.shape[1])]))
    out["accuracy"] = float((pred == y).mean()) if len(y) else math.nan
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value), ignoring NaN."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0
    return average[inverse.reshape(-1)]
