"""The training loop of one fold: optimiser, cosine schedule, early stopping, accumulation, AMP, logs."""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sammil_deploy._deps import require
from sammil_deploy.errors import ConfigError
from sammil_deploy.io_atomic import atomic_path, write_text
from sammil_deploy.mil.config import TrainConfig, TrainRecipe
from sammil_deploy.mil.data import BagDataset
from sammil_deploy.mil.evaluate import autocast, predict
from sammil_deploy.mil.metrics import roc_auc
from sammil_deploy.mil.model import MilHead, build_model
from sammil_deploy.mil.objective import bag_loss, ema_update
from sammil_deploy.mil.threshold import Threshold, choose_threshold, threshold_fields
from sammil_deploy.runtime.devices import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss and parts, validation loss/AUC, learning rate, wall time."""

    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    val_auc: float
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    improved: bool = False


@dataclass
class FitResult:
    """Best model (weights of the best validation epoch, eval mode) and the run's history.

    ``val_margins[e]`` holds the validation logit margins after epoch ``e`` (binary tasks with
    ``keep_val_margins``; inner cross-validation pools them), else it is empty.
    """

    model: MilHead
    best_epoch: int
    threshold: Threshold | None
    history: list[EpochRecord]
    stopped_early: bool
    val_margins: list[np.ndarray] = field(default_factory=list)


@contextlib.contextmanager
def seeded(cfg: TrainConfig) -> Iterator[None]:
    """Seed python/numpy/torch and apply deterministic mode and thread count; restore global flags after."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)  # legacy global seed, as the official seed_torch
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=True)
        torch.set_num_threads(previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]


def fit(
    recipe: TrainRecipe,
    train_ds: BagDataset,
    val_ds: BagDataset | None,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    log_dir: Path | None = None,
    epochs: int | None = None,
    keep_val_margins: bool = False,
) -> FitResult:
    """Train one fold and keep the weights of the best validation epoch.

    Best epoch: strictly higher validation AUC (``monitor = 'auc'``, as the official code) or strictly lower
    validation loss. Early stopping after ``patience`` epochs without improvement, never before
    ``min_epochs``. The binary decision threshold follows ``train.threshold`` (Youden on the validation
    margins by default). Without ``val_ds`` the model of the last epoch is kept (fixed-epoch training) and the
    threshold must not need validation scores.

    Args:
        recipe: Model, objective and loop configs (``recipe.model.in_dim`` must equal the feature dim).
        train_ds: Training bags.
        val_ds: Validation bags (never masked), or None for fixed-epoch training.
        on_epoch: Called after every epoch (progress display).
        log_dir: If given, ``log.csv`` and ``log.json`` (and TensorBoard events if enabled) are written there.
        epochs: Stop after this many epochs (the cosine schedule still spans ``train.epochs``); default all.
        keep_val_margins: Record the validation margins of every epoch in ``FitResult.val_margins``.

    Raises:
        ConfigError: Impossible device, or AUC monitoring with a single-class validation set.
    """
    cfg = recipe.train
    _check_sets(recipe, train_ds, val_ds)
    device = torch.device(resolve_device(cfg.device, option="train.device"))
    with seeded(cfg):
        model = build_model(recipe.model).to(device)
        teacher = _teacher(model, recipe)
        optimizer = _optimizer(model, cfg)
        scheduler = _scheduler(optimizer, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
        generator = torch.Generator().manual_seed(cfg.seed)
        writer = _tensorboard(log_dir) if cfg.tensorboard else None
        history: list[EpochRecord] = []
        best, stopped = _BestEpoch(), False
        val_margins: list[np.ndarray] = []
        for epoch in range(cfg.epochs if epochs is None else min(epochs, cfg.epochs)):
            start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss, parts = _train_epoch(model, teacher, train_ds, recipe, optimizer, scaler, generator, device)
            if scheduler is not None:
                scheduler.step()
            val_loss, val_auc, value = math.nan, math.nan, float(epoch)  # fixed epochs: the last one is "best"
            if val_ds is not None:
                val = predict(model, val_ds, device=device, amp=cfg.amp)
                val_loss, val_auc = val.loss, roc_auc(val.labels, val.probs)
                value = val_auc if cfg.monitor == "auc" else -val.loss
                if keep_val_margins and recipe.model.n_classes == 2:
                    val_margins.append(val.margins)
            improved = best.update(value, epoch, model)
            record = EpochRecord(epoch, lr, loss, val_loss, val_auc, time.perf_counter() - start, parts, improved)
            history.append(record)
            if writer is not None:
                _tensorboard_epoch(writer, record)
            if on_epoch is not None:
                on_epoch(record)
            if cfg.patience and epoch + 1 >= cfg.min_epochs and best.epochs_since >= cfg.patience:
                stopped = True
                log.info("early stop at epoch %d (best %d)", epoch, best.epoch)
                break
        if writer is not None:
            writer.close()
        model.load_state_dict(best.state)
        model.eval()
        threshold = _threshold(model, val_ds, recipe, device)
    result = FitResult(model, best.epoch, threshold, history, stopped, val_margins)
    if log_dir is not None:
        write_logs(log_dir, result)
    return result


@dataclass
class _BestEpoch:
    """The best epoch so far (highest monitored value; the first epoch always counts) and a copy of its weights."""

    value: float = math.nan
    epoch: int = -1
    state: dict[str, torch.Tensor] | None = None
    epochs_since: int = 0

    def update(self, value: float, epoch: int, model: MilHead) -> bool:
        """Record ``epoch`` if it beats the best (strictly); return whether it did."""
        if self.epoch >= 0 and not value > self.value:
            self.epochs_since += 1
            return False
        self.value, self.epoch, self.epochs_since = value, epoch, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


def _check_sets(recipe: TrainRecipe, train_ds: BagDataset, val_ds: BagDataset | None) -> None:
    cfg = recipe.train
    if len(train_ds) == 0 or (val_ds is not None and len(val_ds) == 0):
        raise ConfigError("training and validation sets must both be non-empty")
    if val_ds is None and cfg.threshold == "youden" and recipe.model.n_classes == 2:
        raise ConfigError("fixed-epoch training has no validation bags for a Youden threshold; use --threshold 0.5")
    if val_ds is not None and cfg.monitor == "auc" and len(set(val_ds.labels)) < 2:
        raise ConfigError(
            "the validation split holds a single class, so AUC is undefined; raise "
            "data.val_fraction or set train.monitor = 'loss'"
        )


def _threshold(
    model: MilHead, val_ds: BagDataset | None, recipe: TrainRecipe, device: torch.device
) -> Threshold | None:
    """The binary decision threshold of the selected model (``train.threshold`` on the validation margins)."""
    if recipe.model.n_classes != 2:
        return None
    if val_ds is None:
        return choose_threshold(recipe.train.threshold, np.zeros(0), np.zeros(0))
    val = predict(model, val_ds, device=device, amp=recipe.train.amp)
    return choose_threshold(recipe.train.threshold, val.labels == 1, val.margins)


def _teacher(model: MilHead, recipe: TrainRecipe) -> MilHead | None:
    """The EMA teacher of low-attention masking (a frozen copy of the initial model), else None."""
    masking = recipe.sammil.masking
    if masking.enabled and masking.selection == "low_attention":
        return copy.deepcopy(model).eval().requires_grad_(False)
    return None


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.schedule != "cosine":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=0.0)


def _optimizer(model: MilHead, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _train_epoch(
    model: MilHead,
    teacher: MilHead | None,
    ds: BagDataset,
    recipe: TrainRecipe,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[float, dict[str, float]]:
    """One pass over the shuffled training bags, one slide per forward, a step every ``grad_accum`` slides."""
    cfg = recipe.train
    model.train()
    order = torch.randperm(len(ds), generator=generator).tolist()
    totals: dict[str, float] = {}
    loss_sum = 0.0
    optimizer.zero_grad(set_to_none=True)
    for step, i in enumerate(order, start=1):
        bag = ds[i].to(device)
        with autocast(device, cfg.amp):
            terms = bag_loss(model, bag, recipe.sammil, generator=generator, teacher=teacher)
        scaler.scale(terms.total / cfg.grad_accum).backward()
        loss_sum += float(terms.total.detach())
        for k, v in terms.parts.items():
            totals[k] = totals.get(k, 0.0) + v
        if step % cfg.grad_accum == 0 or step == len(order):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if teacher is not None:
                ema_update(teacher, model, recipe.sammil.masking.teacher_momentum)
    n = max(len(order), 1)
    return loss_sum / n, {k: v / n for k, v in totals.items()}


def write_logs(log_dir: Path, result: FitResult) -> None:
    """``log.csv`` (one row per epoch) and ``log.json`` (history, best epoch, threshold), atomically."""
    part_names = sorted({k for r in result.history for k in r.parts})
    rows = [{**{k: v for k, v in asdict(r).items() if k != "parts"}, **r.parts} for r in result.history]
    fields = [k for k in EpochRecord.__dataclass_fields__ if k != "parts"] + part_names
    with atomic_path(log_dir / "log.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    payload: dict[str, Any] = {
        "best_epoch": result.best_epoch,
        **threshold_fields(result.threshold),
        "stopped_early": result.stopped_early,
        "history": [asdict(r) for r in result.history],
    }
    write_text(log_dir / "log.json", json.dumps(payload, indent=1, default=str))


def _tensorboard(log_dir: Path | None) -> Any:
    if log_dir is None:
        raise ConfigError("train.tensorboard needs an output folder for the event files")
    require("tensorboard", extra="tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir / "tensorboard"))


def _tensorboard_epoch(writer: Any, r: EpochRecord) -> None:
    for name, value in {
        "train/loss": r.train_loss,
        "val/loss": r.val_loss,
        "val/auc": r.val_auc,
        "lr": r.lr,
        **{f"train/{k}": v for k, v in r.parts.items()},
    }.items():
        writer.add_scalar(name, value, r.epoch)
