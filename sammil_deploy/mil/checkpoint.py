"""MIL checkpoints: safetensors weights plus a JSON sidecar (never pickle).

``fold0.safetensors`` holds the weights (and, in its metadata, a copy of the sidecar JSON);
``fold0.json`` holds the model config, feature extractor id and dim, SAM-MIL config, class names, decision
threshold, metrics, versions and training-data hashes. :func:`load_checkpoint` refuses a checkpoint whose
dimensions do not match the features it is meant for.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sammil_deploy.config import to_dict
from sammil_deploy.errors import CheckpointError, ConfigError
from sammil_deploy.io_atomic import save_safetensors, write_text
from sammil_deploy.mil.config import ModelConfig
from sammil_deploy.mil.model import MilHead, build_model
from sammil_deploy.mil.threshold import Threshold, threshold_from_fields

FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything besides the weights that inference needs or a reader wants to know.

    Attributes:
        model: ModelConfig as a dict.
        feature_extractor: Encoder id the features came from (``resnet50_trunc`` ...), or None if unknown.
        feature_dim: D of the features (== model.in_dim).
        class_names: Class of each logit.
        group_tokens: Whether the bag given to the model has the group tokens appended (Eq. 4).
        threshold: Decision threshold on P(class 1) for binary tasks, else None; shown to people, strictly
            inside (0, 1). The decision itself uses ``threshold_margin``.
        threshold_margin: The same threshold on the logit margin ``logit_1 - logit_0`` (decisions use this);
            None in checkpoints written before margins were recorded (then derived from ``threshold``).
        threshold_rule: ``youden``, ``0.5`` or ``fixed`` (how it was chosen), or None.
        sammil: SamMilConfig / TrainConfig used to train, as dicts (empty for imports).
        metrics: Validation/test metrics of this fold.
        data: Training-data provenance (hashes of labels, split and slide lists).
        versions: Package versions at save time.
        source: ``sammil-deploy``, ``official-sammil``, ``official-abmil`` or ``clam``.
    """

    model: dict[str, Any]
    feature_extractor: str | None
    feature_dim: int
    class_names: tuple[str, ...]
    group_tokens: bool
    threshold: float | None = None
    threshold_margin: float | None = None
    threshold_rule: str | None = None
    sammil: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    source: str = "sammil-deploy"
    format_version: int = FORMAT_VERSION

    @property
    def model_config(self) -> ModelConfig:
        """The model config as a dataclass."""
        return ModelConfig(**self.model)

    @property
    def decision_threshold(self) -> Threshold | None:
        """The binary decision rule (margin, probability, rule), or None for argmax."""
        return threshold_from_fields(self.threshold, self.threshold_margin, self.threshold_rule)

    def to_json(self) -> str:
        """Stable JSON text of the metadata."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, indent=2, default=str)


@dataclass(frozen=True)
class MilCheckpoint:
    """A loaded checkpoint: the model in eval mode plus its metadata."""

    model: MilHead
    meta: CheckpointMeta
    path: Path | None = None

    @property
    def model_config(self) -> ModelConfig:
        """The model's config."""
        return self.model.config

    def check_feature_dim(self, feature_dim: int, *, source: str = "the features") -> None:
        """Raise CheckpointError if ``feature_dim`` differs from what the model expects."""
        expected = self.model_config.in_dim
        if feature_dim != expected:
            where = self.path.name if self.path else "checkpoint"
            raise CheckpointError(
                f"{where}: the model expects {expected}-dim features (extractor "
                f"{self.meta.feature_extractor or 'unknown'}) but {source} have {feature_dim} dims; extract "
                "features with the same encoder or use a checkpoint trained on these features"
            )


def make_meta(
    cfg: ModelConfig,
    *,
    class_names: tuple[str, ...] | list[str],
    group_tokens: bool,
    feature_extractor: str | None = None,
    **extra: Any,
) -> CheckpointMeta:
    """Metadata for a model of config ``cfg`` with the current package versions."""
    if len(class_names) != cfg.n_classes:
        raise CheckpointError(f"{len(class_names)} class names for a model with {cfg.n_classes} outputs")
    return CheckpointMeta(
        model=to_dict(cfg),
        feature_extractor=feature_extractor,
        feature_dim=cfg.in_dim,
        class_names=tuple(class_names),
        group_tokens=group_tokens,
        versions=package_versions(),
        **extra,
    )


def checkpoint_paths(path: Path) -> tuple[Path, Path]:
    """(weights, sidecar) paths for ``x.safetensors``, ``x.json`` or the stem ``x``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (WEIGHTS_SUFFIX, SIDECAR_SUFFIX) else path
    return stem.with_name(stem.name + WEIGHTS_SUFFIX), stem.with_name(stem.name + SIDECAR_SUFFIX)


def save_checkpoint(path: Path, model: MilHead, meta: CheckpointMeta) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` atomically; returns the weights path.

    Raises:
        CheckpointError: If ``meta`` disagrees with the model's config.
    """
    if meta.model != to_dict(model.config):
        raise CheckpointError("checkpoint metadata describes a different model config than the weights")
    weights, sidecar = checkpoint_paths(path)
    text = meta.to_json()
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_text(sidecar, text + "\n")
    save_safetensors(weights, state, metadata={"sammil_deploy": text})  # last: its presence means complete
    return weights


def load_checkpoint(path: Path, *, feature_dim: int | None = None, device: str | torch.device = "cpu") -> MilCheckpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Without the sidecar JSON, the copy embedded in the safetensors metadata is used.

    Args:
        path: ``x.safetensors``, ``x.json`` or the stem ``x``.
        feature_dim: If given, the feature dimension the model will see; a mismatch raises.
        device: Where to put the model.

    Returns:
        The model in eval mode and its metadata.

    Raises:
        CheckpointError: Missing/corrupt files, weights that do not fit the config, or a dimension mismatch.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    weights, sidecar = checkpoint_paths(path)
    if not weights.is_file():
        raise CheckpointError(
            f"{weights}: checkpoint weights not found; pass the .safetensors written by "
            "`sammil-deploy train` or `sammil-deploy import-checkpoint`"
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            embedded = (f.metadata() or {}).get("sammil_deploy")
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from None
    text = sidecar.read_text() if sidecar.is_file() else embedded
    if text is None:
        raise CheckpointError(f"{weights}: no metadata ({sidecar.name} missing and none embedded); re-save it")
    meta = _meta_from_json(text, weights)
    try:
        cfg = meta.model_config
    except (TypeError, ConfigError) as err:
        raise CheckpointError(f"{weights}: invalid model config in metadata ({err})") from None
    model = build_model(cfg, init=False)
    _load_state(model, state, weights)
    ckpt = MilCheckpoint(model=model.to(device).eval(), meta=meta, path=weights)
    if feature_dim is not None:
        ckpt.check_feature_dim(feature_dim)
    return ckpt


def import_external_checkpoint(path: Path, **kwargs: Any) -> MilCheckpoint:
    """Import an official SAM-MIL, its AB-MIL, or a CLAM_SB ``.pt``/``.pth``; see :mod:`.external`."""
    from sammil_deploy.mil.external import import_external

    return import_external(path, **kwargs)


def import_checkpoint(source: Path, out: Path, **kwargs: Any) -> MilCheckpoint:
    """Import an external ``.pt``/``.pth`` (:func:`import_external_checkpoint` keywords) and save it at ``out``.

    Returns the checkpoint with ``path`` set to the written ``.safetensors`` (its ``.json`` sits beside it).
    """
    ckpt = import_external_checkpoint(source, **kwargs)
    return dataclasses.replace(ckpt, path=save_checkpoint(out, ckpt.model, ckpt.meta))


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint."""
    import numpy
    import safetensors

    from sammil_deploy import __version__

    return {
        "sammil_deploy": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
    }


def _meta_from_json(text: str, where: Path) -> CheckpointMeta:
    try:
        raw = json.loads(text)
        raw["class_names"] = tuple(raw["class_names"])
        meta = CheckpointMeta(**raw)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{where}: checkpoint metadata is malformed ({err}); re-save the checkpoint") from None
    if meta.format_version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format version {meta.format_version} is newer than this toolkit "
            f"({FORMAT_VERSION}); upgrade sammil-deploy"
        )
    return meta


def _load_state(model: MilHead, state: dict[str, torch.Tensor], where: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise CheckpointError(f"{where}: weights do not match the model config in the metadata ({detail})")
    model.load_state_dict(state)
