"""Choosing the epoch and the decision threshold of one outer fold without ever looking at its test bags.

Modes (``train.selection``):

- ``validation``: the validation split of the training fold picks the best epoch and the threshold (as before).
  With a handful of validation bags both are noisy (issue 11: an ~8-bag split picked epochs 1-5).
- ``inner_cv``: K-fold cross-validation over the whole training fold (train + validation bags). Every inner
  model trains for all ``train.epochs``; the epoch with the best mean held-out AUC (ties: lower mean loss) is
  chosen, the threshold comes from the pooled held-out margins of the inner models at that epoch, and a final
  model is trained on the whole training fold for that many epochs (same schedule).
- ``fixed``: train on the whole training fold for ``train.epochs``; no selection, threshold ``0.5`` or given.
- ``auto``: ``inner_cv`` when the validation split has fewer than ``train.min_val_bags`` bags, else
  ``validation``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sammil_deploy.errors import ConfigError
from sammil_deploy.mil.config import TrainRecipe
from sammil_deploy.mil.data import BagDataset, Labels, Split, make_splits
from sammil_deploy.mil.fit import EpochRecord, FitResult, fit, write_logs
from sammil_deploy.mil.threshold import choose_threshold

log = logging.getLogger(__name__)

DatasetFactory = Callable[[Sequence[str]], BagDataset]


@dataclass(frozen=True)
class FoldFit:
    """The model of one outer fold and how it was selected.

    Attributes:
        result: Final model (eval mode), its epoch, threshold and history.
        selection: The mode actually used (``auto`` resolved).
        epochs_trained: Epochs over all models of the fold (inner ones included).
        inner_curve: Mean inner held-out AUC per epoch (``inner_cv`` only).
    """

    result: FitResult
    selection: str
    epochs_trained: int
    inner_curve: tuple[float, ...] = ()


def resolve_selection(recipe: TrainRecipe, n_val: int) -> str:
    """``auto`` → ``inner_cv`` below ``train.min_val_bags`` validation bags, else ``validation``.

    Raises:
        ConfigError: ``fixed`` with a Youden threshold on a binary task (no held-out bags to choose it on).
    """
    cfg = recipe.train
    if cfg.selection == "fixed" and cfg.threshold == "youden" and recipe.model.n_classes == 2:
        raise ConfigError(
            "train.selection = 'fixed' keeps no held-out bags to choose a Youden threshold on; use "
            "--threshold 0.5 (or a probability), or --selection inner_cv"
        )
    if cfg.selection != "auto":
        return cfg.selection
    return "inner_cv" if n_val < cfg.min_val_bags else "validation"


def fit_fold(
    recipe: TrainRecipe,
    split: Split,
    dataset: DatasetFactory,
    y: dict[str, int],
    *,
    log_dir: Path | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> FoldFit:
    """Train the model of one outer fold, selecting epoch and threshold per ``train.selection``."""
    mode = resolve_selection(recipe, len(split.val))
    if mode == "validation":
        if len(split.val) < recipe.train.min_val_bags:
            log.warning(
                "%s: the validation split has %d bags (< %d): epoch and threshold will be noisy; consider "
                "--selection inner_cv or fixed",
                split.name,
                len(split.val),
                recipe.train.min_val_bags,
            )
        result = fit(recipe, dataset(split.train), dataset(split.val), log_dir=log_dir, on_epoch=on_epoch)
        return FoldFit(result, mode, len(result.history))
    pool = tuple(split.train) + tuple(split.val)
    if mode == "fixed":
        result = fit(recipe, dataset(pool), None, log_dir=log_dir, on_epoch=on_epoch)
        return FoldFit(result, mode, len(result.history))
    return _inner_cv(recipe, pool, dataset, y, log_dir=log_dir, on_epoch=on_epoch)


def _inner_cv(
    recipe: TrainRecipe,
    pool: tuple[str, ...],
    dataset: DatasetFactory,
    y: dict[str, int],
    *,
    log_dir: Path | None,
    on_epoch: Callable[[EpochRecord], None] | None,
) -> FoldFit:
    cfg = recipe.train
    labels = np.array([y[s] for s in pool], dtype=np.int64)
    counts = np.bincount(labels, minlength=recipe.model.n_classes)
    if counts.min() < cfg.inner_folds:
        raise ConfigError(
            f"inner cross-validation needs >= {cfg.inner_folds} bags of every class in each training fold, but "
            f"one class has {counts.min()}; lower train.inner_folds or use --selection validation / fixed"
        )
    names = tuple(str(c) for c in range(recipe.model.n_classes))
    inner = make_splits(Labels(pool, labels, names), folds=cfg.inner_folds, val_fraction=0.5, seed=cfg.seed)
    # Every inner model runs all epochs so that the curves share one epoch axis.
    all_epochs = dataclasses.replace(recipe, train=dataclasses.replace(cfg, patience=0, threshold="0.5"))
    aucs, losses, margins, held_out_y, trained = [], [], [], [], 0
    for k, s in enumerate(inner):
        held_out = dataset(s.test)
        r = fit(
            all_epochs,
            dataset(tuple(s.train) + tuple(s.val)),
            held_out,
            log_dir=None if log_dir is None else log_dir / f"inner{k}",
            on_epoch=on_epoch,
            keep_val_margins=True,
        )
        aucs.append([e.val_auc for e in r.history])
        losses.append([e.val_loss for e in r.history])
        margins.append(r.val_margins)
        held_out_y.append(np.asarray(held_out.labels) == 1)
        trained += len(r.history)
    mean_auc, mean_loss = np.nanmean(np.asarray(aucs), axis=0), np.mean(np.asarray(losses), axis=0)
    if cfg.monitor == "auc":
        order = np.lexsort((mean_loss, -np.nan_to_num(mean_auc, nan=-1.0)))  # best AUC, then lowest loss
    else:
        order = np.argsort(mean_loss, kind="stable")
    epoch = int(order[0])
    threshold = None
    if recipe.model.n_classes == 2:
        pooled = np.concatenate([m[epoch] for m in margins])
        threshold = choose_threshold(cfg.threshold, np.concatenate(held_out_y), pooled)
    fixed = dataclasses.replace(recipe, train=dataclasses.replace(cfg, threshold="0.5"))
    final = fit(fixed, dataset(pool), None, on_epoch=on_epoch, epochs=epoch + 1)
    result = dataclasses.replace(final, threshold=threshold)
    if log_dir is not None:
        write_logs(log_dir, result)
    _log_choice(pool, epoch, mean_auc, threshold)
    return FoldFit(result, "inner_cv", trained + len(final.history), tuple(float(a) for a in mean_auc))


def _log_choice(pool: Sequence[str], epoch: int, mean_auc: np.ndarray, threshold: Any) -> None:
    log.info(
        "inner CV over %d bags: epoch %d (mean held-out AUC %.4f), threshold %s",
        len(pool),
        epoch,
        float(mean_auc[epoch]),
        threshold,
    )
