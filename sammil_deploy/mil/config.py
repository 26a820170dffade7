"""Frozen, validated configs of the MIL stage: model, SAM-MIL objective, optimisation loop and data protocol.

A recipe TOML (``training/*.toml``) has the tables ``[model]``, ``[sammil]`` (with ``[sammil.masking]``),
``[train]`` and ``[data]``; :func:`load_recipe` builds a :class:`TrainRecipe` from it. Defaults follow the
official SAM-MIL code (``reference/sammil-official.md`` §3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sammil_deploy.config import load_config
from sammil_deploy.errors import ConfigError

MODEL_KINDS = ("attention", "mean", "max")
ACTIVATIONS = ("relu", "tanh", "gelu")
OBJECTIVES = ("paper", "official")
MASK_STRATEGIES = ("none", "sg2m", "random", "random_non_group")
MASK_SELECTIONS = ("random", "low_attention")
RATIO_FUNCTIONS = ("sigmoid", "linear", "constant")


def _choice(section: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """MIL head. ``attention`` is AB-MIL as in the official SAM-MIL code (ReLU attention, no attention biases).

    Attributes:
        kind: ``attention`` (AB-MIL), ``mean`` or ``max`` pooling baselines.
        in_dim: Feature dimension D of the bag (1024 for ResNet50-trunc).
        embed_dim: Width of the input projection Linear(D -> embed_dim) + ReLU.
        embed_hidden: If > 0, the projection is two layers: Linear(D -> embed_hidden) + ReLU + dropout, then
            Linear(embed_hidden -> embed_dim) + ReLU (Ilse et al.'s fc-256, fc-128 for the classical MIL data).
        attn_dim: Hidden width of the attention MLP.
        n_classes: Number of output logits C.
        gated: Gated attention act(a)·sigmoid(b) -> c instead of act(a) -> c.
        activation: Attention activation; ``relu`` is the official SAM-MIL one, ``tanh`` is CLAM / Ilse et al.
        attention_bias: Biases in the attention Linears (off in SAM-MIL, on in CLAM).
        dropout: Dropout after the projection (training only).
    """

    kind: str = "attention"
    in_dim: int = 1024
    embed_dim: int = 512
    embed_hidden: int = 0
    attn_dim: int = 128
    n_classes: int = 2
    gated: bool = False
    activation: str = "relu"
    attention_bias: bool = False
    dropout: float = 0.25

    def __post_init__(self) -> None:
        _choice("model", "kind", self.kind, MODEL_KINDS)
        _choice("model", "activation", self.activation, ACTIVATIONS)
        for name in ("in_dim", "embed_dim", "attn_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.embed_hidden < 0:
            raise ConfigError(f"model.embed_hidden must be >= 0 (0 = one projection layer), got {self.embed_hidden}")
        if self.n_classes < 2:
            raise ConfigError(f"model.n_classes must be >= 2 (binary tasks use 2 logits), got {self.n_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class MaskConfig:
    """SG2M instance masking (Eq. 5-8) and its ablations; training only, masked instances are dropped.

    Attributes:
        strategy: ``sg2m`` (per segment category, ratio from its area), ``random`` (uniform over all tokens,
            group tokens included: paper Table 3 "random mask"), ``random_non_group`` (uniform, group tokens
            kept), ``none``.
        selection: Which instances of a category are dropped: ``random`` (official) or ``low_attention``
            (an EMA teacher scores instances and the lowest-attention ones go first; an MHIM-style extension,
            not in the official SAM-MIL training).
        ratio_fn: ``sigmoid`` r = mask_ratio·sigmoid(k·(A - A0)); ``linear`` r = mask_ratio·min(A / linear_area_px, 1);
            ``constant`` r = mask_ratio. A is the category's area in segmentation-image pixels.
        mask_ratio: MR_target (the constant ratio for ``random`` strategies).
        sigmoid_k: k of the adjusted sigmoid (1 / pixels).
        sigmoid_a0_px: A0 of the adjusted sigmoid (pixels).
        linear_area_px: Area at which the linear ratio reaches ``mask_ratio`` (our choice: 2·A0).
        teacher_momentum: EMA momentum of the teacher used by ``low_attention`` (per optimiser step).
    """

    strategy: str = "sg2m"
    selection: str = "random"
    ratio_fn: str = "sigmoid"
    mask_ratio: float = 0.9
    sigmoid_k: float = 0.0005
    sigmoid_a0_px: float = 5000.0
    linear_area_px: float = 10000.0
    teacher_momentum: float = 0.999

    def __post_init__(self) -> None:
        _choice("sammil.masking", "strategy", self.strategy, MASK_STRATEGIES)
        _choice("sammil.masking", "selection", self.selection, MASK_SELECTIONS)
        _choice("sammil.masking", "ratio_fn", self.ratio_fn, RATIO_FUNCTIONS)
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"sammil.masking.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.linear_area_px <= 0:
            raise ConfigError(f"sammil.masking.linear_area_px must be > 0, got {self.linear_area_px}")
        if not 0.0 <= self.teacher_momentum < 1.0:
            raise ConfigError(f"sammil.masking.teacher_momentum must be in [0, 1), got {self.teacher_momentum}")
        if self.selection == "low_attention" and self.strategy != "sg2m":
            raise ConfigError("sammil.masking.selection = 'low_attention' needs strategy = 'sg2m'")

    @property
    def enabled(self) -> bool:
        """Whether any instance is ever dropped."""
        return self.strategy != "none" and self.mask_ratio > 0.0


@dataclass(frozen=True)
class SamMilConfig:
    """SAM-MIL training objective (Eq. 4, 11-13). All parts off gives plain AB-MIL (CE on the whole bag).

    Attributes:
        objective: ``paper`` L = CE(masked bag) + alpha·mean CE(pseudo-bags) + beta·L_con (Eq. 13), or
            ``official``: what the released code optimises, CE(last pseudo-bag) + alpha·mean CE(pseudo-bags),
            unmasked, no consistency term.
        group_tokens: Append one mean-feature token per SAM segment to the bag (Eq. 4), in training and at
            evaluation.
        masking: SG2M / ablation masking.
        pseudo_bags: Number m of pseudo-bags (random permutation, contiguous chunks, remainder to the last);
            0 or 1 turns them off.
        alpha: Weight of the mean pseudo-bag CE.
        beta: Weight of the attention-consistency loss (Eq. 12; attention is ~1/N, hence 1000).
        consistency_chunk_rows: Row chunk of the pairwise consistency computation (``pairwise`` method).
        consistency_method: ``moments`` (exact O(N) closed form, default) or ``pairwise`` (the official chunked
            O(N·n_c) computation).
    """

    objective: str = "paper"
    group_tokens: bool = True
    masking: MaskConfig = field(default_factory=MaskConfig)
    pseudo_bags: int = 5
    alpha: float = 0.5
    beta: float = 1000.0
    consistency_chunk_rows: int = 2048
    consistency_method: str = "moments"

    def __post_init__(self) -> None:
        _choice("sammil", "objective", self.objective, OBJECTIVES)
        _choice("sammil", "consistency_method", self.consistency_method, ("moments", "pairwise"))
        if self.pseudo_bags < 0:
            raise ConfigError(f"sammil.pseudo_bags must be >= 0, got {self.pseudo_bags}")
        if self.alpha < 0 or self.beta < 0:
            raise ConfigError(f"sammil.alpha and sammil.beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.consistency_chunk_rows <= 0:
            raise ConfigError(f"sammil.consistency_chunk_rows must be > 0, got {self.consistency_chunk_rows}")
        if self.objective == "official" and self.pseudo_bags < 2:
            raise ConfigError(
                "sammil.objective = 'official' trains on pseudo-bags only; set sammil.pseudo_bags >= 2 (official 5)"
            )

    @property
    def uses_pseudo_bags(self) -> bool:
        """Whether pseudo-bags enter the loss."""
        return self.pseudo_bags >= 2 and (self.objective == "official" or self.alpha > 0)

    @property
    def uses_consistency(self) -> bool:
        """Whether the consistency term enters the loss (paper objective only)."""
        return self.objective == "paper" and self.beta > 0

    @property
    def needs_context(self) -> bool:
        """Whether training needs SAM spatial context in every bag."""
        sg2m = self.objective == "paper" and self.masking.enabled and self.masking.strategy == "sg2m"
        return self.group_tokens or sg2m or self.uses_consistency


SELECTION_MODES = ("validation", "inner_cv", "fixed", "auto")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation loop (official: Adam, lr 2e-4, wd 1e-5, cosine over 200 epochs, early stop on AUC).

    Attributes:
        optimizer: ``adam`` or ``adamw``.
        lr: Learning rate.
        weight_decay: Weight decay.
        schedule: ``cosine`` (T_max = epochs, eta_min 0, stepped per epoch) or ``none``.
        epochs: Maximum epochs.
        monitor: Early-stopping / best-epoch metric on the validation split: ``auc`` or ``loss``.
        patience: Epochs without improvement before stopping (0 = never stop early).
        min_epochs: No early stop before this epoch.
        grad_accum: Slides per optimiser step (batch is one slide).
        seed: Seed of python, numpy and torch; re-seeded at each fold.
        deterministic: torch deterministic algorithms (slower on GPU).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: Mixed precision (bf16 on CPU, fp16 with a grad scaler on CUDA).
        cache_bags: Keep all bags in memory instead of reading each file every epoch.
        threads: torch CPU threads (0 = leave torch's default).
        tensorboard: Also write TensorBoard event files next to the CSV/JSON logs (needs ``tensorboard``).
        threshold: Binary decision rule: ``youden`` (Youden's J on held-out training-fold scores, on the logit
            margin), ``0.5``, or a probability in (0, 1) as text (``"0.3"``).
        selection: How the epoch and the threshold are chosen without the test fold: ``validation`` (the
            validation split of each training fold), ``inner_cv`` (``inner_folds``-fold CV over the whole training
            fold, then a refit on all of it for the chosen number of epochs), ``fixed`` (train on the whole
            training fold for ``epochs``; no selection, so the threshold must be ``0.5`` or a number) or ``auto``
            (``inner_cv`` when a validation split has fewer than ``min_val_bags`` bags, else ``validation``).
        inner_folds: K of the inner cross-validation.
        min_val_bags: Smallest validation split trusted for selection (``auto``; ``validation`` warns below it).
    """

    optimizer: str = "adam"
    lr: float = 2e-4
    weight_decay: float = 1e-5
    schedule: str = "cosine"
    epochs: int = 200
    monitor: str = "auc"
    patience: int = 30
    min_epochs: int = 130
    grad_accum: int = 1
    seed: int = 2021
    deterministic: bool = True
    device: str = "auto"
    amp: bool = False
    cache_bags: bool = True
    threads: int = 0
    tensorboard: bool = False
    threshold: str = "youden"
    selection: str = "validation"
    inner_folds: int = 5
    min_val_bags: int = 20

    def __post_init__(self) -> None:
        from sammil_deploy.mil.threshold import parse_threshold_option

        object.__setattr__(self, "threshold", str(parse_threshold_option(self.threshold)))
        _choice("train", "selection", self.selection, SELECTION_MODES)
        if self.inner_folds < 2:
            raise ConfigError(f"train.inner_folds must be >= 2, got {self.inner_folds}")
        _choice("train", "optimizer", self.optimizer, ("adam", "adamw"))
        _choice("train", "schedule", self.schedule, ("cosine", "none"))
        _choice("train", "monitor", self.monitor, ("auc", "loss"))
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"train.lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        for name in ("epochs", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "min_epochs", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N; got {self.device!r}")


@dataclass(frozen=True)
class DataConfig:
    """Cross-validation protocol when no splits file is given.

    Attributes:
        folds: K of stratified K-fold (official 5).
        repeats: Repeats of the K-fold with different shuffles (seed + repeat).
        val_fraction: Stratified share of each training fold held out for validation (early stopping,
            best epoch, Youden threshold). Unlike the official code (validation = test fold), the test fold is
            never looked at before the final evaluation.
        seed: Seed of the split generator.
        class_names: Optional class order (label index = position); otherwise sorted names / integer labels.
    """

    folds: int = 5
    repeats: int = 1
    val_fraction: float = 0.2
    seed: int = 2021
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ConfigError(f"data.folds must be >= 2, got {self.folds}")
        if self.repeats < 1:
            raise ConfigError(f"data.repeats must be >= 1, got {self.repeats}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class TrainRecipe:
    """Everything `sammil-deploy train` needs besides file paths."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sammil: SamMilConfig = field(default_factory=SamMilConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.model.kind != "attention" and (
            self.sammil.uses_consistency or self.sammil.masking.selection == "low_attention"
        ):
            raise ConfigError(
                f"model.kind = {self.model.kind!r} has no learned attention; set sammil.beta = 0 and "
                "sammil.masking.selection = 'random' (or use model.kind = 'attention')"
            )


# Presets behind `--model`; a recipe file and CLI flags are applied on top.
_PLAIN_MIL = {"group_tokens": False, "masking": {"strategy": "none"}, "pseudo_bags": 0, "alpha": 0.0, "beta": 0.0}
_MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "sammil": {"model": {"kind": "attention"}, "sammil": {}},
    "abmil": {"model": {"kind": "attention"}, "sammil": _PLAIN_MIL},
    "abmil-gated": {"model": {"kind": "attention", "gated": True}, "sammil": _PLAIN_MIL},
    "mean": {"model": {"kind": "mean"}, "sammil": _PLAIN_MIL},
    "max": {"model": {"kind": "max"}, "sammil": _PLAIN_MIL},
}
MODEL_PRESETS = tuple(_MODEL_PRESETS)


def load_recipe(
    path: Path | None = None, *, preset: str | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainRecipe:
    """Build a recipe: defaults, then the TOML file, then the ``--model`` preset, then dotted CLI overrides.

    A preset only sets what defines the model family (``abmil`` turns every SAM-MIL part off; ``sammil`` only
    asks for attention MIL and keeps the file's SAM-MIL settings).

    Raises:
        ConfigError: On an unknown preset or key, or an invalid value or combination.
    """
    if preset is not None and preset not in _MODEL_PRESETS:
        raise ConfigError(f"unknown model {preset!r}; choose from {', '.join(MODEL_PRESETS)}")

    def with_preset(data: dict[str, Any]) -> dict[str, Any]:
        return _merge(data, _MODEL_PRESETS[preset]) if preset is not None else data

    return load_config(TrainRecipe, path, prepare=with_preset, overrides=overrides)


def with_data_shape(recipe: TrainRecipe, *, in_dim: int, n_classes: int) -> TrainRecipe:
    """The recipe with the model dimensions the data dictates."""
    model = dataclasses.replace(recipe.model, in_dim=in_dim, n_classes=n_classes)
    return dataclasses.replace(recipe, model=model)


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
