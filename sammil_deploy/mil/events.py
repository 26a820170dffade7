"""Typed progress events of cross-validated training (what ``train_cross_validation(on_event=...)`` receives).

One fold emits ``FoldStart``, one ``EpochEnd`` per epoch (inner cross-validation folds included), then ``FoldEnd``
with the fold's test metrics. A display matches on the class (``match event: case FoldStart(): ...``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sammil_deploy.mil.fit import EpochRecord


@dataclass(frozen=True, slots=True)
class FoldStart:
    """An outer fold begins: its name, split sizes (slides), epochs to run in all, selection mode."""

    fold: str
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    selection: str


@dataclass(frozen=True, slots=True)
class EpochEnd:
    """One training epoch of ``fold`` finished (losses, validation AUC, whether it improved)."""

    fold: str
    record: EpochRecord


@dataclass(frozen=True, slots=True)
class FoldEnd:
    """An outer fold finished: epochs run, the selected epoch, and its test metrics.

    ``metrics`` is the fold's row of ``summary.json`` (``auc``, ``accuracy``, ``f1``, ``threshold`` ...).
    """

    fold: str
    epochs_run: int
    best_epoch: int
    metrics: dict[str, Any]


TrainingEvent = FoldStart | EpochEnd | FoldEnd
OnTrainingEvent = Callable[[TrainingEvent], None]

__all__ = ["EpochEnd", "FoldEnd", "FoldStart", "OnTrainingEvent", "TrainingEvent"]
