"""SAM export: the image encoder (dynamic batch) and a prompt-encoder + mask-decoder for point grids.

Encoder: ``images (batch, 3, S, S)`` float32, already resized (longest side S), normalised with SAM's
pixel mean/std (0-255 scale) and zero-padded bottom/right — exactly ``Sam.preprocess`` — to
``image_embeddings (batch, C, S/16, S/16)``. Normalisation is *not* folded in: SAM pads after normalising,
so a folded graph would need the unpadded size as a second input; the preprocessing is stamped in metadata.

Decoder: the automatic mask generator's workflow, not the interactive one. Upstream's ONNX export serves one
prompt set per call; SamAutomaticMaskGenerator instead sends batches of single points (``points_per_batch``
64) against one image embedding and asks for three masks per point. So the inputs are one embedding
``(1, C, h, w)``, ``point_coords (num_prompts, 1, 2)`` and ``point_labels (num_prompts, 1)`` with a dynamic
``num_prompts``, and the outputs are ``low_res_masks (num_prompts, 3, 4h, 4w)`` logits and
``iou_predictions (num_prompts, 3)`` — ``predict_torch(..., multimask_output=True, return_logits=True)``
before upscaling. The point embedding is rewritten without boolean-index assignment (which the exporters
turn into ``ScatterND``); everything else calls upstream's modules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sammil_deploy.export.spec import DEFAULT_OPSET, ExportSpec, TensorSpec
from sammil_deploy.export.verify import (
    TOLERANCES,
    ParityReport,
    Runner,
    Tolerance,
    compare_outputs,
    onnx_runner,
    torch_runner,
)

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

ENCODER_INPUTS = ("images",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")


class SamPointDecoder(nn.Module):
    """Prompt encoder + mask decoder for batches of single-point prompts on one image embedding.

    ``forward(image_embeddings (1, C, h, w), point_coords (P, K, 2) xy px in the S x S input frame,
    point_labels (P, K) float 1/0/-1) -> (low_res_masks (P, 3, 4h, 4w) logits, iou_predictions (P, 3))``.
    Same numbers as ``PromptEncoder(points=...)`` followed by ``MaskDecoder(multimask_output=True)``.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        # Constant per model: precomputed so the graph carries a (1, C, h, w) initializer, not its recipe.
        self.register_buffer("image_pe", sam.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)
        h_px, w_px = sam.prompt_encoder.input_image_size
        self.register_buffer("size_wh_px", torch.tensor([w_px, h_px], dtype=torch.float32), persistent=False)

    def embed_points(self, coords_xy_px: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Upstream ``PromptEncoder._embed_points(pad=True)`` with arithmetic masks: (P, K+1, C)."""
        pe = self.prompt_encoder
        coords = torch.cat([coords_xy_px + 0.5, torch.zeros_like(coords_xy_px[:, :1])], dim=1)  # pixel centres
        labels = torch.cat([labels, torch.full_like(labels[:, :1], -1.0)], dim=1).unsqueeze(-1)
        encoded = pe.pe_layer._pe_encoding(coords / self.size_wh_px)
        padding = labels == -1
        embedding = torch.where(padding, torch.zeros_like(encoded), encoded) + padding * pe.not_a_point_embed.weight
        embedding = embedding + (labels == 0) * pe.point_embeddings[0].weight
        return embedding + (labels == 1) * pe.point_embeddings[1].weight

    def forward(
        self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See the class docstring."""
        sparse = self.embed_points(point_coords, point_labels)
        # No mask prompt: one (1, C, 1, 1) embedding broadcast inside predict_masks (upstream expands it).
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, iou = self.mask_decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense)
        return masks[:, 1:], iou[:, 1:]


def sam_model_config(sam: Sam, model_type: str) -> dict[str, Any]:
    """Architecture facts stored with the artifacts (from the segment helper's spec table when known)."""
    from sammil_deploy.segment.sam_model import SAM_SPECS

    config: dict[str, Any] = {"model_type": model_type}
    if model_type in SAM_SPECS:
        config.update(dataclasses.asdict(SAM_SPECS[model_type]))
    config["image_size_px"] = int(sam.image_encoder.img_size)
    return config


def sam_preprocessing(sam: Sam) -> dict[str, Any]:
    """What must happen to an RGB uint8 image before the encoder (``Sam.preprocess``)."""
    return {
        "input": "RGB image resized so its longest side is image_size_px (ResizeLongestSide)",
        "pixel_mean_0_255": [float(v) for v in sam.pixel_mean.flatten()],
        "pixel_std_0_255": [float(v) for v in sam.pixel_std.flatten()],
        "pad": "zero-pad bottom/right to image_size_px x image_size_px after normalising",
        "layout": "NCHW float32",
        "image_size_px": int(sam.image_encoder.img_size),
    }


def encoder_spec(sam: Sam, model_type: str, source_sha256: str, opset: int = DEFAULT_OPSET) -> ExportSpec:
    """I/O contract of the image encoder."""
    size_px = int(sam.image_encoder.img_size)
    embed_hw = size_px // 16
    channels = int(sam.prompt_encoder.embed_dim)
    return ExportSpec(
        part="sam_encoder",
        inputs=(TensorSpec("images", "float32", ("batch", 3, size_px, size_px), "Sam.preprocess output"),),
        outputs=(
            TensorSpec("image_embeddings", "float32", ("batch", channels, embed_hw, embed_hw), "image embedding"),
        ),
        preprocessing=sam_preprocessing(sam),
        config=sam_model_config(sam, model_type),
        source_sha256=source_sha256,
        opset=opset,
    )


def decoder_spec(sam: Sam, model_type: str, source_sha256: str, opset: int = DEFAULT_OPSET) -> ExportSpec:
    """I/O contract of the point-grid prompt encoder + mask decoder."""
    embed_h, embed_w = sam.prompt_encoder.image_embedding_size
    channels = int(sam.prompt_encoder.embed_dim)
    return ExportSpec(
        part="sam_decoder",
        inputs=(
            TensorSpec("image_embeddings", "float32", (1, channels, embed_h, embed_w), "one image's embedding"),
            TensorSpec("point_coords", "float32", ("num_prompts", 1, 2), "xy px in the encoder input frame"),
            TensorSpec("point_labels", "float32", ("num_prompts", 1), "1 foreground, 0 background"),
        ),
        outputs=(
            TensorSpec("low_res_masks", "float32", ("num_prompts", 3, 4 * embed_h, 4 * embed_w), "mask logits"),
            TensorSpec("iou_predictions", "float32", ("num_prompts", 3), "predicted mask IoU"),
        ),
        preprocessing={"point_frame": "pixels of the resized (longest side image_size_px) image, x then y"},
        config={**sam_model_config(sam, model_type), "multimask_output": True, "mask_threshold": 0.0},
        source_sha256=source_sha256,
        opset=opset,
    )


def random_encoder_inputs(sam: Sam, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Normal(0, 1) images, the scale of normalised pixels: ``{"images": (batch, 3, S, S)}``."""
    size_px = int(sam.image_encoder.img_size)
    return {"images": rng.standard_normal((batch, 3, size_px, size_px), dtype=np.float32)}


def point_grid_inputs(n_per_side: int, size_hw_px: tuple[int, int]) -> dict[str, np.ndarray]:
    """SamAutomaticMaskGenerator's point grid on an image of ``size_hw_px``: coords (n², 1, 2), labels (n², 1)."""
    from segment_anything.utils.amg import build_all_layer_point_grids

    grid = build_all_layer_point_grids(n_per_side, 0, 1)[0]  # (n², 2) xy in [0, 1]
    coords = (grid * np.array(size_hw_px[::-1], dtype=np.float64)).astype(np.float32)[:, None, :]
    return {"point_coords": coords, "point_labels": np.ones((len(coords), 1), dtype=np.float32)}


def sam_inputs_from_rgb(sam: Sam, rgb: np.ndarray) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """``Sam.preprocess`` of an (H, W, 3) uint8 image: ``({"images": (1, 3, S, S)}, resized (h, w) px)``."""
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(int(sam.image_encoder.img_size)).apply_image(np.ascontiguousarray(rgb))
    tensor = torch.from_numpy(resized).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        images = sam.preprocess(tensor.to(sam.pixel_mean.device)).cpu().numpy()
    return {"images": images}, (int(resized.shape[0]), int(resized.shape[1]))


def chain_parity(
    sam: Sam,
    encoder: Path | Runner,
    decoder: Path | Runner,
    images: Mapping[str, np.ndarray],
    points: Mapping[str, np.ndarray],
    tol: Tolerance | str,
    *,
    artifact: str = "sam_encoder+sam_decoder",
    notes: Mapping[str, Any] | None = None,
) -> ParityReport:
    """Encoder → decoder parity as the mask generator uses them: embeddings, mask logits (+ mask IoU), IoU scores.

    Each image of ``images`` is encoded by both the reference and the candidate, and each candidate embedding
    goes to the candidate decoder (errors compound as in deployment).

    Args:
        sam: The PyTorch reference model.
        encoder: Exported encoder (ONNX path, or a runner such as a TensorRT engine).
        decoder: Exported decoder (ONNX path or runner).
        images: ``{"images": (B, 3, S, S)}`` preprocessed.
        points: ``{"point_coords": (P, 1, 2), "point_labels": (P, 1)}``.
        tol: Tolerance or precision name.
        artifact: Report label.
        notes: Extra context for the report.
    """
    tol_obj = TOLERANCES[tol] if isinstance(tol, str) else tol
    ref_enc = torch_runner(sam.image_encoder, ENCODER_INPUTS, ENCODER_OUTPUTS)
    ref_dec = torch_runner(SamPointDecoder(sam), DECODER_INPUTS, DECODER_OUTPUTS)
    cand_enc = onnx_runner(encoder) if isinstance(encoder, (str, Path)) else encoder
    cand_dec = onnx_runner(decoder) if isinstance(decoder, (str, Path)) else decoder
    ref_sets, cand_sets = [], []
    for b in range(images["images"].shape[0]):
        one = {"images": images["images"][b : b + 1]}
        ref_emb, cand_emb = ref_enc(one)["image_embeddings"], cand_enc(one)["image_embeddings"]
        ref_sets.append({"image_embeddings": ref_emb, **ref_dec({"image_embeddings": ref_emb, **points})})
        cand_sets.append({"image_embeddings": cand_emb, **cand_dec({"image_embeddings": cand_emb, **points})})
    outputs = compare_outputs(ref_sets, cand_sets, tol_obj, mask_outputs=("low_res_masks",))
    precision = tol if isinstance(tol, str) else "custom"
    return ParityReport(artifact, precision, tol_obj, outputs, len(ref_sets), dict(notes or {}))
