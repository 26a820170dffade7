"""Segmenters by name: SAM on PyTorch (fast or upstream generator), SAM on exported graphs, the k-means fallback.

Every caller (``extract``, ``add-context``, ``infer``, the demo) builds its segmenter once with
:func:`create_segmenter` and segments each slide through :func:`sammil_deploy.segment.segment_slide`, so all of
them frame, segment and order masks the same way. :func:`segmenter_name` says which registered segmenter a
config (and the parts at hand) selects; :func:`register_segmenter` adds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sammil_deploy.errors import SegmentationError
from sammil_deploy.registry import Registry
from sammil_deploy.segment.config import SegmentConfig
from sammil_deploy.segment.segmentation import Segmentation

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from sammil_deploy.runtime import Backend
    from sammil_deploy.segment.fast_automask import FastMaskGenerator


class Segmenter(Protocol):
    """Something that segments a SAM image (an (H, W, 3) uint8 RGB array) into masks."""

    name: str

    def segment(self, image: np.ndarray) -> Segmentation:
        """The masks of ``image`` in the segmenter's order (group-token order)."""
        ...


SegmenterBuilder = Callable[..., Segmenter]
_SEGMENTERS: Registry[SegmenterBuilder] = Registry("segmenter")
register_segmenter = _SEGMENTERS.register  # decorator: @register_segmenter("name") on builder(cfg, **parts)
available_segmenters = _SEGMENTERS.names  # sorted registry names


def segmenter_name(cfg: SegmentConfig, *, exported: bool = False) -> str:
    """The registered segmenter ``cfg`` selects.

    ``fallback``; ``sam_exported`` when exported SAM parts are at hand; else ``sam_torch_fast`` or
    ``sam_torch_reference`` (``cfg.generator``).
    """
    if cfg.resolved_segmenter != "sam":
        return "fallback"
    return "sam_exported" if exported else f"sam_torch_{cfg.generator}"


def create_segmenter(cfg: SegmentConfig, *, name: str | None = None, **parts: Any) -> Segmenter:
    """Build a segmenter once (load SAM, wrap sessions) to reuse for every slide.

    Args:
        cfg: Segmenter settings.
        name: A registered name; :func:`segmenter_name` of ``cfg`` (and of the ``parts``) when None.
        parts: What the builder needs: ``sam`` (a loaded PyTorch SAM to reuse) for ``sam_torch_*``;
            ``encoder``, ``decoder`` (runtime backends of the exported SAM parts) for ``sam_exported``.

    Raises:
        ConfigError: Unknown name.
    """
    name = name or segmenter_name(cfg, exported="encoder" in parts)
    return _SEGMENTERS.get(name)(cfg, **parts)


@dataclass
class FallbackSegmenter:
    """Classical colour/texture clustering (:mod:`sammil_deploy.segment.fallback`); needs no weights."""

    cfg: SegmentConfig
    name: str = "fallback"

    def segment(self, image: np.ndarray) -> Segmentation:
        """See :func:`sammil_deploy.segment.fallback.fallback_segment`."""
        from sammil_deploy.segment.fallback import fallback_segment

        return fallback_segment(image, self.cfg)


@dataclass
class TorchSamSegmenter:
    """SAM's PyTorch modules with our fast generator or upstream ``SamAutomaticMaskGenerator`` (same masks)."""

    cfg: SegmentConfig
    sam: Sam
    name: str = "sam_torch_fast"
    _fast: FastMaskGenerator | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.name == "sam_torch_fast":
            from sammil_deploy.segment.fast_automask import FastMaskGenerator

            self._fast = FastMaskGenerator.from_sam(self.sam, self.cfg)

    def segment(self, image: np.ndarray) -> Segmentation:
        """The fast generator's or ``automask.sam_segment``'s masks on the loaded model.

        Raises:
            SegmentationError: If the GPU runs out of memory (with the settings to lower).
        """
        if self._fast is None:
            from sammil_deploy.segment.automask import sam_segment

            return sam_segment(image, self.cfg, sam=self.sam)
        import torch

        try:
            return self._fast.generate(image)
        except torch.cuda.OutOfMemoryError:
            raise SegmentationError(
                f"{self._fast.name} ran out of GPU memory on a {image.shape[1]}x{image.shape[0]} image; lower "
                "segment.points_per_batch (e.g. 16) or segment.long_side_px, or use device 'cpu'"
            ) from None


@dataclass
class ExportedSamSegmenter:
    """The fast generator driving exported SAM graphs through runtime backends (ONNX Runtime, TensorRT).

    Uses the backends' ``infer_torch`` (ORT IO binding), so on a GPU embeddings and logits stay on the device.
    """

    generator: FastMaskGenerator
    name: str = "sam_exported"

    def segment(self, image: np.ndarray) -> Segmentation:
        """See :meth:`FastMaskGenerator.generate`."""
        return self.generator.generate(image)


@register_segmenter("fallback")
def _fallback(cfg: SegmentConfig) -> Segmenter:
    return FallbackSegmenter(cfg)


def _torch_sam(generator: str) -> SegmenterBuilder:
    def build(cfg: SegmentConfig, *, sam: Sam | None = None) -> Segmenter:
        from sammil_deploy.segment.automask import load_sam

        return TorchSamSegmenter(cfg, sam if sam is not None else load_sam(cfg), name=f"sam_torch_{generator}")

    return build


register_segmenter("sam_torch_fast")(_torch_sam("fast"))
register_segmenter("sam_torch_reference")(_torch_sam("reference"))


@register_segmenter("sam_exported")
def _exported_sam(
    cfg: SegmentConfig, *, encoder: Backend, decoder: Backend, device: str = "cpu", model_type: str = "exported"
) -> Segmenter:
    """``encoder``: ``images -> image_embeddings``; ``decoder``: the point-grid decoder (``export.sam``)."""
    from sammil_deploy.segment.fast_automask import FastMaskGenerator

    def decode(embedding: Any, coords: Any, labels: Any) -> tuple[Any, Any]:
        out = decoder.infer_torch({"image_embeddings": embedding, "point_coords": coords, "point_labels": labels})
        return out["low_res_masks"], out["iou_predictions"]

    generator = FastMaskGenerator(
        lambda images: encoder.infer_torch({"images": images})["image_embeddings"],
        decode,
        cfg,
        int(encoder.input_spec[0].shape[-1]),
        device=device,
        name=f"sam_fast_{model_type}",
    )
    return ExportedSamSegmenter(generator)
