"""SAM automatic mask generation on a SAM image, with SAM-MIL's generator settings."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from sammil_deploy.errors import SegmentationError
from sammil_deploy.runtime.devices import resolve_device
from sammil_deploy.segment.config import SegmentConfig
from sammil_deploy.segment.image_tissue import tissue_mask_on_image
from sammil_deploy.segment.sam_model import build_sam, detect_sam_model_type
from sammil_deploy.segment.segmentation import Segmentation

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

log = logging.getLogger(__name__)


def load_sam(cfg: SegmentConfig) -> Sam:
    """Build the SAM model ``cfg`` names (load once, reuse for every slide)."""
    return build_sam(cfg.sam_model, cfg.sam_checkpoint, device=resolve_device(cfg.device))


def sam_segment(image: np.ndarray, cfg: SegmentConfig, sam: Sam | None = None) -> Segmentation:
    """Run ``SamAutomaticMaskGenerator`` on an (H, W, 3) uint8 RGB image.

    Masks keep the generator's output order (SAM-MIL's group-token order) and only those with
    ``area >= cfg.min_mask_region_area`` are kept, as SAM-MIL does after generation.

    Args:
        image: The SAM image.
        cfg: Generator settings (points, thresholds, crops) and, when ``sam`` is None, the model to load.
        sam: A model from ``load_sam``/``build_sam``; built from ``cfg`` when None.

    Returns:
        Segmentation named ``sam_<type>`` (``sam_vit_h`` ...).

    Raises:
        SegmentationError: If the GPU runs out of memory (with the settings to lower).
    """
    import torch

    if sam is None:
        sam = load_sam(cfg)
    model_type = detect_sam_model_type(sam.state_dict())
    generator = _empty_safe_generator()(
        sam,
        points_per_side=cfg.points_per_side,
        points_per_batch=cfg.points_per_batch,
        pred_iou_thresh=cfg.pred_iou_thresh,
        stability_score_thresh=cfg.stability_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        crop_n_layers=cfg.crop_n_layers,
        crop_n_points_downscale_factor=cfg.crop_n_points_downscale_factor,
        min_mask_region_area=cfg.min_mask_region_area,
        output_mode="binary_mask",
    )
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            records = generator.generate(np.ascontiguousarray(image, dtype=np.uint8))
    except torch.cuda.OutOfMemoryError:
        raise SegmentationError(
            f"SAM {model_type} ran out of GPU memory on a {image.shape[1]}x{image.shape[0]} image; lower "
            "segment.points_per_batch (e.g. 16) or segment.long_side_px, or use device 'cpu'"
        ) from None
    kept = [r["segmentation"] for r in records if r["area"] >= cfg.min_mask_region_area]
    total_s = time.perf_counter() - start
    log.info(
        "SAM %s: %d masks (%d kept) on %dx%d in %.1f s",
        model_type,
        len(records),
        len(kept),
        image.shape[1],
        image.shape[0],
        total_s,
    )
    segmentation = Segmentation.from_masks(
        kept,
        image_hw=(int(image.shape[0]), int(image.shape[1])),
        segmenter=f"sam_{model_type}",
        config=_generator_settings(cfg, model_type),
        tissue_area_px=int(tissue_mask_on_image(image).sum()),
    )
    segmentation.profile.update(total_s=round(total_s, 4), masks=segmentation.n_masks)
    return segmentation


def _empty_safe_generator() -> type:
    """Upstream ``SamAutomaticMaskGenerator`` that returns no masks, instead of raising, when none passes.

    With crop layers and no mask left after the per-crop filters, upstream's crop NMS indexes an empty box
    tensor and raises IndexError (``box_area`` of a (0,) tensor). A slide without masks is valid (its context is
    empty), so that exact case returns empty mask data; any other IndexError still propagates.
    """
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import MaskData

    class EmptySafeMaskGenerator(SamAutomaticMaskGenerator):
        def _process_crop(self, *args: object, **kwargs: object) -> MaskData:
            data = super()._process_crop(*args, **kwargs)
            self.masks_before_crop_nms += len(data["rles"])
            return data

        def _generate_masks(self, image: np.ndarray) -> MaskData:
            self.masks_before_crop_nms = 0
            try:
                return super()._generate_masks(image)
            except IndexError:
                if self.masks_before_crop_nms:
                    raise
                return MaskData(rles=[])

    return EmptySafeMaskGenerator


def _generator_settings(cfg: SegmentConfig, model_type: str) -> dict[str, object]:
    return {
        "sam_model": model_type,
        "sam_checkpoint": str(cfg.sam_checkpoint) if cfg.sam_checkpoint else None,
        "points_per_side": cfg.points_per_side,
        "points_per_batch": cfg.points_per_batch,
        "crop_n_layers": cfg.crop_n_layers,
        "crop_n_points_downscale_factor": cfg.crop_n_points_downscale_factor,
        "pred_iou_thresh": cfg.pred_iou_thresh,
        "stability_score_thresh": cfg.stability_score_thresh,
        "min_mask_region_area": cfg.min_mask_region_area,
        "box_nms_thresh": cfg.box_nms_thresh,
    }
