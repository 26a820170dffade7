"""Classification metrics in numpy (no sklearn): ROC AUC, accuracy, F1 (thresholds: :mod:`.threshold`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sammil_deploy.mil.threshold import Threshold, margins_from_probs


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


def f1_binary(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of the positive class (0 when there is no positive prediction and no positive label)."""
    y, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp = int((y & p).sum())
    denom = 2 * tp + int((~y & p).sum()) + int((y & ~p).sum())
    return 2.0 * tp / denom if denom else 0.0


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    threshold: Threshold | None = None,
    margins: np.ndarray | None = None,
) -> dict[str, Any]:
    """AUC, accuracy and F1 of class probabilities.

    Binary: class 1 iff the logit margin >= ``threshold.margin`` (margin 0, i.e. P(1) >= 0.5, if None); F1 of
    class 1, precision, recall, and the accuracy and F1 at P(1) >= 0.5 too (``accuracy_at_0.5``,
    ``f1_at_0.5``). Multi-class: argmax predictions and macro F1 over the classes.

    Args:
        y_true: (n,) int class indices.
        probs: (n, C) class probabilities.
        threshold: Binary decision threshold (chosen on validation).
        margins: (n,) logit margins ``logit_1 - logit_0``; from ``probs`` if None (saturated ones become ±inf).
    """
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    out: dict[str, Any] = {"n": int(len(y)), "auc": roc_auc(y, probs)}
    if probs.shape[1] == 2:
        thr = threshold or Threshold(0.0, "0.5")
        m = margins_from_probs(probs) if margins is None else np.asarray(margins, dtype=np.float64)
        pred = thr.decide(m).astype(np.int64)
        at_half = (m >= 0.0).astype(np.int64)
        tp = int(((pred == 1) & (y == 1)).sum())
        out.update(
            threshold=thr.probability,
            threshold_margin=thr.margin,
            threshold_rule=thr.rule,
            f1=f1_binary(y == 1, pred == 1),
            precision=tp / max(int((pred == 1).sum()), 1),
            recall=tp / max(int((y == 1).sum()), 1),
        )
        out["accuracy_at_0.5"] = float((at_half == y).mean()) if len(y) else math.nan
        out["f1_at_0.5"] = f1_binary(y == 1, at_half == 1)
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
