"""MIL head export: one bag of a dynamic number of instances → logits, class probabilities and attention.

The bag is what the head saw in training: ``num_instances`` rows = the N patch features followed by the G
group tokens when the checkpoint was trained with them (``group_tokens`` in the metadata). Dropout is off
(eval). Outputs: ``logits (C,)``, ``probabilities (C,)`` (softmax of the logits) and ``attention
(num_instances,)`` (softmax over the bag, sums to 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sammil_deploy.export.spec import DEFAULT_OPSET, ExportSpec, TensorSpec

if TYPE_CHECKING:
    from sammil_deploy.mil.checkpoint import MilCheckpoint

INPUTS = ("features",)
OUTPUTS = ("logits", "probabilities", "attention")


def mil_spec(ckpt: MilCheckpoint, source_sha256: str, opset: int = DEFAULT_OPSET) -> ExportSpec:
    """I/O contract of the MIL head, with the checkpoint's classes, threshold and bag layout as metadata."""
    cfg = ckpt.model_config
    meta = ckpt.meta
    bag = "N patch rows then G group tokens" if meta.group_tokens else "N patch rows"
    return ExportSpec(
        part="mil",
        inputs=(TensorSpec("features", "float32", ("num_instances", cfg.in_dim), bag),),
        outputs=(
            TensorSpec("logits", "float32", (cfg.n_classes,), "class logits"),
            TensorSpec("probabilities", "float32", (cfg.n_classes,), "softmax of logits"),
            TensorSpec("attention", "float32", ("num_instances",), "attention over the bag, sums to 1"),
        ),
        preprocessing={
            "input": f"{meta.feature_extractor or 'unknown'} features ({meta.feature_dim}-d), {bag}",
            "group_tokens": meta.group_tokens,
        },
        config={
            "model": meta.model,
            "class_names": list(meta.class_names),
            "threshold": meta.threshold,
            "feature_extractor": meta.feature_extractor,
            "checkpoint_source": meta.source,
        },
        source_sha256=source_sha256,
        opset=opset,
    )


def random_bag(in_dim: int, num_instances: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """ReLU-like non-negative random features ``{"features": (num_instances, in_dim)}`` (ResNet features are >= 0)."""
    return {"features": np.abs(rng.standard_normal((num_instances, in_dim), dtype=np.float32))}


def example_inputs(ckpt: MilCheckpoint) -> tuple[torch.Tensor, ...]:
    """A 16-instance example bag for tracing (dynamic axes need size >= 2)."""
    return (torch.from_numpy(random_bag(ckpt.model_config.in_dim, 16, np.random.default_rng(0))["features"]),)


def describe(ckpt: MilCheckpoint) -> dict[str, Any]:
    """Short description for reports."""
    cfg = ckpt.model_config
    return {"kind": cfg.kind, "in_dim": cfg.in_dim, "n_classes": cfg.n_classes, "gated": cfg.gated}
