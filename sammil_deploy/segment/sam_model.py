"""Build Segment Anything models (vit_h / vit_l / vit_b, plus a tiny test config) and load local checkpoints.

The architectures are segment-anything's own classes (``Sam``, ``ImageEncoderViT``, ``PromptEncoder``,
``MaskDecoder``, ``TwoWayTransformer``) with the hyper-parameters of its registry. We build them here rather
than calling ``segment_anything.sam_model_registry`` because upstream loads checkpoints with a bare
``torch.load`` (full pickle, no ``map_location``); we load with ``weights_only=True`` onto the requested device
and check the checkpoint's shapes against the model type first.

``"tiny"`` is a test-only config (same classes, 128 px input, 64-d 2-block encoder, 32-d 2-layer decoder,
~0.3 M parameters) that makes the automatic mask generator run in seconds on a CPU. It is randomly
initialised unless a state dict saved from a tiny model is given; its masks mean nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sammil_deploy.errors import ConfigError, WeightsError
from sammil_deploy.runtime.devices import resolve_device

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b", "tiny")

_POS_EMBED_KEY = "image_encoder.pos_embed"
_PATCH_EMBED_KEY = "image_encoder.patch_embed.proj.weight"
_BLOCK_KEY = re.compile(r"^image_encoder\.blocks\.(\d+)\.")


@dataclass(frozen=True, slots=True)
class SamSpec:
    """Hyper-parameters of one SAM architecture (upstream's ``_build_sam`` with the fixed values made explicit)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size_px: int = 1024
    vit_patch_size_px: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


SAM_SPECS: dict[str, SamSpec] = {
    "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
    # Test-only: keeps every class and code path (windowed + global attention, rel-pos, two-way transformer).
    "tiny": SamSpec(
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size_px=128,
        window_size=4,
        prompt_embed_dim=32,
        mask_in_chans=4,
        decoder_depth=2,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    ),
}


def build_sam(model_type: str, checkpoint: Path | None = None, device: str = "cpu") -> Sam:
    """Build a SAM model in eval mode, optionally loading a local checkpoint.

    Args:
        model_type: ``"vit_h"``, ``"vit_l"``, ``"vit_b"``, ``"tiny"``, or ``"auto"`` (detect from the
            checkpoint's shapes; needs ``checkpoint``).
        checkpoint: A ``.pth`` state dict (Meta's ``sam_vit_*.pth`` or one saved with ``torch.save``), loaded
            with ``torch.load(weights_only=True)``. ``None`` leaves the weights randomly initialised.
        device: Torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``"auto"``).

    Returns:
        ``segment_anything.modeling.Sam`` on ``device``, in eval mode.

    Raises:
        ConfigError: Unknown ``model_type``, or ``"auto"`` without a checkpoint.
        WeightsError: Checkpoint missing, unreadable, of another model type, or with mismatching keys.
    """
    import torch

    torch_device = torch.device(resolve_device(device))
    state_dict = None
    if checkpoint is not None:
        state_dict = load_sam_state_dict(checkpoint)
        detected = detect_sam_model_type(state_dict, source=Path(checkpoint).name)
        if model_type == "auto":
            model_type = detected
        elif model_type != detected:
            raise WeightsError(
                f"{Path(checkpoint).name}: checkpoint holds a SAM {detected} but sam_model is {model_type!r}; "
                f"set sam_model to {detected!r} (or 'auto')"
            )
    elif model_type == "auto":
        raise ConfigError("sam_model 'auto' needs a SAM checkpoint to detect the type from; pass sam_checkpoint")
    spec = _spec(model_type)
    sam = _build_from_spec(spec)
    if state_dict is not None:
        _load_into(sam, state_dict, source=Path(checkpoint).name)  # type: ignore[arg-type]
    return sam.to(torch_device).eval()


def load_sam_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Read a SAM state dict from a local file with ``weights_only=True`` onto the CPU.

    A ``{"model": state_dict}`` or ``{"state_dict": ...}`` wrapper (common in fine-tuned releases) is unwrapped.

    Raises:
        WeightsError: The file is missing, not a torch checkpoint, needs pickled objects, or holds no state dict.
    """
    import pickle

    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise WeightsError(f"{path}: SAM checkpoint not found; pass the path of sam_vit_h_4b8939.pth (or vit_l/vit_b)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise WeightsError(
            f"{path.name}: cannot be read as a torch state dict with weights_only=True ({err}); "
            "pass an original SAM .pth or a state dict saved with torch.save(model.state_dict(), path)"
        ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path.name}: does not hold a state dict of tensors; it is not a SAM checkpoint")
    return dict(obj)


def detect_sam_model_type(state_dict: Mapping[str, Any], *, source: str = "state dict") -> str:
    """Name the SAM architecture (``vit_h``/``vit_l``/``vit_b``/``tiny``) from a state dict's shapes.

    Uses the encoder width (``pos_embed`` / ``patch_embed`` channels: 1280, 1024, 768, 64) and its block count.

    Raises:
        WeightsError: If the keys are not SAM's, or the shapes match no known architecture.
    """
    embed = state_dict.get(_POS_EMBED_KEY)
    patch = state_dict.get(_PATCH_EMBED_KEY)
    if embed is None and patch is None:
        raise WeightsError(
            f"{source}: no '{_POS_EMBED_KEY}' or '{_PATCH_EMBED_KEY}' key; this is not a Segment Anything "
            "checkpoint (expected sam_vit_h/l/b .pth with image_encoder.*, prompt_encoder.*, mask_decoder.* keys)"
        )
    embed_dim = int(embed.shape[-1]) if embed is not None else int(patch.shape[0])
    depth = 1 + max((int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))), default=-1)
    for name, spec in SAM_SPECS.items():
        if spec.encoder_embed_dim == embed_dim and spec.encoder_depth == depth:
            return name
    known = ", ".join(f"{n}: dim {s.encoder_embed_dim}, {s.encoder_depth} blocks" for n, s in SAM_SPECS.items())
    raise WeightsError(
        f"{source}: SAM image encoder with dim {embed_dim} and {depth} blocks matches no known model ({known})"
    )


def _spec(model_type: str) -> SamSpec:
    try:
        return SAM_SPECS[model_type]
    except KeyError:
        raise ConfigError(f"unknown SAM model type {model_type!r}; choose from {sorted(SAM_SPECS)} or 'auto'") from None


def _build_from_spec(spec: SamSpec) -> Sam:
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    embedding_size = spec.image_size_px // spec.vit_patch_size_px
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=spec.image_size_px,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=spec.vit_patch_size_px,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.encoder_global_attn_indexes,
            window_size=spec.window_size,
            out_chans=spec.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(spec.image_size_px, spec.image_size_px),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=spec.decoder_depth,
                embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def _load_into(sam: Sam, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    expected = sam.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in expected.keys() & state_dict.keys() if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise WeightsError(
            f"{source}: keys do not match the SAM architecture: {'; '.join(parts)}; "
            "the file is damaged or from a modified SAM"
        )
    sam.load_state_dict(state_dict, strict=True)
