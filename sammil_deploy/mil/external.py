"""Import MIL heads trained elsewhere: official SAM-MIL, its bundled AB-MIL init checkpoints, CLAM_SB.

The layout is detected from the state-dict keys; the dimensions, gating and attention biases come from the
weight shapes, so the imported :class:`AttentionMIL` computes exactly what the original module did:

- official SAM-MIL: ``patch_to_emb.0`` Linear + ReLU, attention under ``online_encoder.attn_model.attention.``
  (``online_encoder.attention.`` in the AB-MIL init checkpoints): plain ``attention.{0,2}`` or gated
  ``attention_a.0`` / ``attention_b.0`` / ``attention_c``, no biases, ReLU (``--da_act``, not in the weights);
  ``predictor`` Linear.
- CLAM_SB: ``attention_net.0`` Linear + ReLU (+ dropout), gated ``attention_net.3.attention_{a,b}.0`` (tanh /
  sigmoid) and ``attention_c``, or plain ``attention_net.3.module.*`` (tanh), with biases; ``classifiers``
  Linear. ``instance_classifiers`` (CLAM's clustering branch) are not used at inference and are ignored.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from sammil_deploy.errors import CheckpointError
from sammil_deploy.mil.checkpoint import MilCheckpoint, make_meta, save_checkpoint
from sammil_deploy.mil.config import ModelConfig
from sammil_deploy.mil.model import build_model

_OFFICIAL_PREFIXES = ("online_encoder.attn_model.attention.", "online_encoder.attention.")


def import_external_checkpoint(
    path: Path,
    *,
    feature_dim: int | None = None,
    encoder: str | None = None,
    activation: str | None = None,
    class_names: tuple[str, ...] | None = None,
    group_tokens: bool | None = None,
) -> MilCheckpoint:
    """Load ``path`` (``torch.load(weights_only=True)``) and convert it to our model.

    Args:
        path: ``.pt``/``.pth``: a state dict, or a dict holding one under ``model`` (official
            ``{'model', 'teacher'}``), ``state_dict`` or ``model_state_dict``.
        feature_dim: If given, refuse a checkpoint whose input dimension differs.
        encoder: Feature-extractor id to record (``resnet50_trunc`` for both official SAM-MIL and CLAM).
        activation: Attention activation override; defaults: ``relu`` (official), ``tanh`` (CLAM).
        class_names: Names of the logits; default ``0..C-1``.
        group_tokens: Whether the model expects group tokens appended; default True for SAM-MIL, else False.

    Raises:
        CheckpointError: Unreadable file, unknown layout, or dimension mismatch.
    """
    path = Path(path)
    state = _read_state_dict(path)
    if "patch_to_emb.0.weight" in state:
        cfg_kwargs, ours, source = _from_official(state, path)
        default_act = "relu"
    elif "attention_net.0.weight" in state:
        cfg_kwargs, ours, source = _from_clam(state, path)
        default_act = "tanh"
    else:
        keys = ", ".join(sorted(state)[:6])
        raise CheckpointError(
            f"{path}: unknown checkpoint layout (first keys: {keys}); supported: official SAM-MIL "
            "(patch_to_emb.*, online_encoder.*, predictor.*) and CLAM_SB (attention_net.*, classifiers.*)"
        )
    cfg = ModelConfig(kind="attention", activation=activation or default_act, **cfg_kwargs)
    model = build_model(cfg, init=False)
    model.load_state_dict({k: v.float() for k, v in ours.items()})
    names = tuple(class_names) if class_names else tuple(str(i) for i in range(cfg.n_classes))
    with_groups = (source == "official-sammil") if group_tokens is None else group_tokens
    meta = make_meta(
        cfg,
        class_names=names,
        group_tokens=with_groups,
        feature_extractor=encoder,
        source=source,
        data={"imported_from": str(path)},
    )
    ckpt = MilCheckpoint(model=model.eval(), meta=meta, path=None)
    if feature_dim is not None:
        ckpt.check_feature_dim(feature_dim, source=f"features for {path.name}")
    return ckpt


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises many types for non-checkpoint / pickled-code files)
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({type(err).__name__}: {err}); "
            "re-save it as a plain state dict"
        ) from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (or a dict with 'model'), got {type(obj)}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _need(state: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{path}: checkpoint lacks {key!r}; is it complete?")
    return state[key]


def _sequential_linears(state: dict[str, torch.Tensor], prefix: str) -> list[str]:
    """Sub-prefixes ``prefix<i>.`` of the Linears in an nn.Sequential, in index order."""
    found = {int(m.group(1)) for k in state if (m := re.fullmatch(re.escape(prefix) + r"(\d+)\.weight", k))}
    return [f"{prefix}{i}." for i in sorted(found)]


def _attention_block(
    state: dict[str, torch.Tensor], prefix: str, plain: str, path: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Map a gated (``attention_a/b/c``) or plain (Sequential ``plain``) attention block under ``prefix``."""
    ours: dict[str, torch.Tensor] = {}
    if prefix + "attention_a.0.weight" in state:
        pairs = {
            "attention_a": prefix + "attention_a.0.",
            "attention_b": prefix + "attention_b.0.",
            "attention_c": prefix + "attention_c.",
        }
        gated = True
    else:
        linears = _sequential_linears(state, prefix + plain)
        if len(linears) != 2:
            raise CheckpointError(
                f"{path}: expected two attention Linears under {prefix + plain}, found {len(linears)}"
            )
        pairs = {"attention_a": linears[0], "attention_c": linears[1]}
        gated = False
    for ours_name, theirs in pairs.items():
        ours[ours_name + ".weight"] = _need(state, theirs + "weight", path)
        if theirs + "bias" in state:
            ours[ours_name + ".bias"] = state[theirs + "bias"]
    n_biases = sum(k.endswith(".bias") for k in ours)
    if n_biases not in (0, len(pairs)):
        raise CheckpointError(f"{path}: some attention Linears have biases and some do not; unsupported variant")
    has_bias = n_biases > 0
    if ours["attention_c.weight"].shape[0] != 1:
        raise CheckpointError(
            f"{path}: {ours['attention_c.weight'].shape[0]} attention branches (CLAM_MB?); "
            "only single-branch attention (CLAM_SB, SAM-MIL) is supported"
        )
    attn_dim, embed_dim = ours["attention_a.weight"].shape
    return {"gated": gated, "attention_bias": has_bias, "attn_dim": attn_dim, "embed_dim": embed_dim}, ours


def _from_official(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    prefix = next((p for p in _OFFICIAL_PREFIXES if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        raise CheckpointError(
            f"{path}: official layout without attention weights under {' or '.join(_OFFICIAL_PREFIXES)}"
        )
    dims, ours = _attention_block(state, prefix, "attention.", path)
    return _finish(state, dims, ours, "patch_to_emb.0.", "predictor.", path) + (
        "official-sammil" if prefix == _OFFICIAL_PREFIXES[0] else "official-abmil",
    )


def _from_clam(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    if "classifiers.weight" not in state:
        raise CheckpointError(
            f"{path}: CLAM checkpoint without a single 'classifiers' Linear (CLAM_MB?); only CLAM_SB is supported"
        )
    block = next(
        (
            m.group(1)
            for k in state
            if (m := re.fullmatch(r"(attention_net\.\d+\.)(attention_a|module)\.\d+\.weight", k))
        ),
        None,
    )
    if block is None:
        raise CheckpointError(f"{path}: CLAM checkpoint without an attention block under attention_net.*")
    dims, ours = _attention_block(state, block, "module.", path)
    return _finish(state, dims, ours, "attention_net.0.", "classifiers.", path) + ("clam",)


def _finish(
    state: dict[str, torch.Tensor],
    dims: dict[str, Any],
    ours: dict[str, torch.Tensor],
    embed: str,
    head: str,
    path: Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    for ours_name, theirs in (("embed_fc", embed), ("classifier", head)):
        ours[ours_name + ".weight"] = _need(state, theirs + "weight", path)
        ours[ours_name + ".bias"] = _need(state, theirs + "bias", path)
    embed_dim, in_dim = ours["embed_fc.weight"].shape
    n_classes = ours["classifier.weight"].shape[0]
    if embed_dim != dims["embed_dim"] or ours["classifier.weight"].shape[1] != embed_dim:
        raise CheckpointError(
            f"{path}: inconsistent widths: projection {embed_dim}, attention "
            f"{dims['embed_dim']}, classifier {ours['classifier.weight'].shape[1]}"
        )
    return {**dims, "in_dim": in_dim, "n_classes": n_classes}, ours


def import_checkpoint(source: Path, out: Path, **kwargs: Any) -> MilCheckpoint:
    """Import an external ``.pt``/``.pth`` (:func:`import_external_checkpoint` keywords) and save it at ``out``.

    Returns the checkpoint with ``path`` set to the written ``.safetensors`` (its ``.json`` sits beside it).
    """
    ckpt = import_external_checkpoint(source, **kwargs)
    return dataclasses.replace(ckpt, path=save_checkpoint(out, ckpt.model, ckpt.meta))
