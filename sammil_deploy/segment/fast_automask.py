"""Fast SAM automatic mask generation on any backend: upstream's algorithm, batched and vectorised.

``FastMaskGenerator`` gives the masks of ``segment_anything.SamAutomaticMaskGenerator`` (same crops, point grids,
thresholds, NMS order and cleanup) from two plain callables, so the PyTorch modules, an ONNX Runtime session or a
TensorRT engine can drive it:

- ``encoder(images) -> image_embeddings``: ``images`` is a (B, 3, S, S) float32 torch tensor on the generator's
  device, already ``Sam.preprocess``-ed (ResizeLongestSide to S, normalised with SAM's pixel mean/std on the
  0-255 scale, zero-padded bottom/right); returns (B, C, S/16, S/16) float embeddings as a torch tensor or a
  numpy array. This is the ONNX export's ``images -> image_embeddings``.
- ``decoder(image_embeddings, point_coords, point_labels) -> (low_res_masks, iou_predictions)``: one image's
  (1, C, h, w) embedding, (P, 1, 2) float32 point xy in pixels of the S x S encoder input (before SAM's +0.5
  pixel-centre shift, which the decoder applies) and (P, 1) float32 labels (all 1); returns (P, 3, 4h, 4w)
  float mask logits and (P, 3) predicted IoUs of ``multimask_output=True``, as tensors or numpy arrays. This is
  the ONNX export's point-grid decoder.

:meth:`FastMaskGenerator.from_sam` wraps the PyTorch ``Sam`` modules; :meth:`FastMaskGenerator.from_sessions`
wraps two ONNX Runtime ``InferenceSession`` objects (anything with ``get_inputs()`` and ``run(None, feed)``).

Where the speed comes from, with the same masks: on a GPU all crops go through the encoder in one batch; prompts are
decoded in batches (optionally the next batch in a worker thread while this one is post-processed); the IoU
filter runs before upsampling (the reference upsamples every mask, 3 per point); on a CPU each mask is upsampled
only inside the window its low-res logits can reach (``upsample.py``; on a GPU whole maps in chunks, on the
device), and stability scores and boxes come from that pass; only the masks surviving both NMS rounds are
upsampled again, inside their boxes (no full-image padding, no RLE round trip); small-region cleanup works on
each mask's box. The per-mask steps live in ``candidates.py``. ``Segmentation.profile`` records encoder passes,
decoder prompts and the seconds of encoder, decoder (``decoder_s``: the calls; ``decoder_wait_s``: what they
added to the total) and post-processing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.errors import SegmentationError
from sammil_deploy.segment.candidates import CROP_NMS_THRESH, Candidates, MaskRenderer, remove_small_regions
from sammil_deploy.segment.config import SegmentConfig
from sammil_deploy.segment.segmentation import Segmentation

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

log = logging.getLogger(__name__)

EncoderFn = Callable[["torch.Tensor"], Any]
DecoderFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], tuple[Any, Any]]

CROP_OVERLAP_RATIO = 512 / 1500  # upstream default, kept by SAM-MIL
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


class FastMaskGenerator:
    """SAM's automatic mask generator from an encoder and a point decoder callable (see the module docstring).

    Args:
        encoder: Preprocessed images (B, 3, S, S) -> embeddings (B, C, S/16, S/16).
        decoder: (embedding (1, C, h, w), coords (P, 1, 2), labels (P, 1)) -> (logits (P, 3, 4h, 4w), iou (P, 3)).
        cfg: Generator settings (points_per_side, crops, thresholds, min_mask_region_area); its model fields are
            not used.
        img_size: Encoder input side S in pixels (1024 for real SAM, 128 for the tiny test model).
        device: Torch device for preprocessing and post-processing (``"cpu"``, ``"cuda"``, ``"auto"``).
        name: Segmenter name recorded in the ``Segmentation`` (e.g. ``sam_fast_vit_h``).
        points_per_batch: Prompts per decoder call; ``cfg.points_per_batch`` when None. Decoder memory per prompt
            is ~25 MB for real SAM (its upscaled feature maps), which is what bounds this, not the results.
        encoder_batch_size: Crops per encoder call. Default: all crops of the image in one call on a GPU, one crop
            per call on a CPU, where a batch only adds memory traffic (SAM ViT-B on 2 cores: 41 s a crop in a
            batch of 5 vs 13.5 s alone with PyTorch, 16.5 vs 7.2 s with ONNX Runtime).
        chunk_px: Upsampled logits are processed this many pixels at a time (bounds post-processing memory to
            ~5 bytes per pixel of it).
        windowed: Upsample each mask only inside the window its low-res logits can reach (``upsample.py``);
            default: on a CPU device.
        overlap_decoder: Decode the next prompt batch in a worker thread while this one is post-processed (same
            masks; the decoder must release the GIL while it computes, as ONNX Runtime and PyTorch ops do). Off by
            default: on a shared 2-core CPU (load ~5) it was neutral with the many-mask stand-in (0.99x) and slower
            by median with the calibrated tiny SAM (0.87x), the two threads queueing for the GIL; its gain is at
            most the decoder's share of the time, on a machine with a free core.
        pixel_mean: SAM's per-channel RGB mean on the 0-255 scale.
        pixel_std: SAM's per-channel RGB std on the 0-255 scale.
    """

    def __init__(
        self,
        encoder: EncoderFn,
        decoder: DecoderFn,
        cfg: SegmentConfig,
        img_size: int,
        device: str = "cpu",
        *,
        name: str = "sam_fast",
        points_per_batch: int | None = None,
        encoder_batch_size: int | None = None,
        chunk_px: int = 1 << 25,
        windowed: bool | None = None,
        overlap_decoder: bool = False,
        pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
        pixel_std: Sequence[float] = SAM_PIXEL_STD,
    ) -> None:
        import torch
        from segment_anything.utils.amg import build_all_layer_point_grids

        from sammil_deploy.runtime.devices import resolve_device

        self.encoder = encoder
        self.decoder = decoder
        self.cfg = cfg
        self.img_size = int(img_size)
        self.device = torch.device(resolve_device(device))
        self.name = name
        self.points_per_batch = int(points_per_batch or cfg.points_per_batch)
        self.encoder_batch_size = encoder_batch_size or (1 if self.device.type == "cpu" else None)
        # Windowed upsampling (upsample.py) saves CPU memory traffic; a GPU has the bandwidth for whole maps and
        # would pay a kernel launch per mask instead.
        on_cpu = self.device.type == "cpu"
        self.renderer = MaskRenderer(self.img_size, self.device, on_cpu if windowed is None else bool(windowed),
                                     int(chunk_px))  # fmt: skip
        self.overlap_decoder = bool(overlap_decoder)
        self._mean = torch.tensor(pixel_mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(pixel_std, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.point_grids = build_all_layer_point_grids(
            cfg.points_per_side, cfg.crop_n_layers, cfg.crop_n_points_downscale_factor
        )

    @classmethod
    def from_sam(cls, sam: Sam, cfg: SegmentConfig, **kwargs: Any) -> FastMaskGenerator:
        """Drive the generator with the PyTorch modules of ``sam`` (no export needed), on ``sam``'s device."""
        from sammil_deploy.segment.sam_model import detect_sam_model_type

        image_pe = sam.prompt_encoder.get_dense_pe()

        def encode(images: torch.Tensor) -> torch.Tensor:
            return sam.image_encoder(images)

        def decode(embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> tuple:
            sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            return sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )

        kwargs.setdefault("name", f"sam_fast_{detect_sam_model_type(sam.state_dict())}")
        kwargs.setdefault("device", str(sam.device))
        kwargs.setdefault("pixel_mean", sam.pixel_mean.flatten().tolist())
        kwargs.setdefault("pixel_std", sam.pixel_std.flatten().tolist())
        return cls(encode, decode, cfg, int(sam.image_encoder.img_size), **kwargs)

    @classmethod
    def from_sessions(
        cls, encoder_session: Any, decoder_session: Any, cfg: SegmentConfig, img_size: int, **kwargs: Any
    ) -> FastMaskGenerator:
        """Drive the generator with two ONNX Runtime sessions of the exported encoder and point decoder.

        Inputs are fed by position (encoder: images; decoder: image_embeddings, point_coords, point_labels) as
        float32 numpy arrays; outputs are taken by position (embeddings; low-res masks, IoU predictions).
        """
        enc_in = encoder_session.get_inputs()[0].name
        dec_in = [i.name for i in decoder_session.get_inputs()]
        if len(dec_in) != 3:
            raise SegmentationError(
                f"the SAM decoder session takes inputs {dec_in}, expected 3 (image_embeddings, point_coords, "
                "point_labels); export it with sammil_deploy.export's point-grid decoder"
            )

        def encode(images: torch.Tensor) -> np.ndarray:
            return encoder_session.run(None, {enc_in: _numpy32(images)})[0]

        def decode(embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> tuple:
            feed = dict(zip(dec_in, (_numpy32(embedding), _numpy32(coords), _numpy32(labels)), strict=True))
            low_res, iou = decoder_session.run(None, feed)[:2]
            return low_res, iou

        return cls(encode, decode, cfg, img_size, **kwargs)

    def generate(self, image: np.ndarray) -> Segmentation:
        """Automatic masks of an (H, W, 3) uint8 RGB image.

        Returns:
            Masks in the reference generator's order (SAM-MIL's group-token order), those with area below
            ``cfg.min_mask_region_area`` dropped as ``automask.sam_segment`` does, and the image's tissue area.
        """
        import torch

        from sammil_deploy.segment.automask import _generator_settings
        from sammil_deploy.segment.image_tissue import tissue_mask_on_image

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise SegmentationError(
                f"SAM needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}; "
                "pass the RGB SAM image (read_sam_image) as uint8"
            )
        start = time.perf_counter()
        # Per call, not on self: infer segments the next slide in a helper thread while this one runs.
        counts: dict[str, float] = dict.fromkeys(
            ("encoder_passes", "encoder_s", "decoder_calls", "decoder_prompts", "decoder_s", "decoder_wait_s"), 0
        )
        with torch.inference_mode():
            boxes, crops = self._generate(np.ascontiguousarray(image), counts)
        areas = np.asarray([int(c.sum()) for c in crops], np.int64)
        keep = np.flatnonzero(areas >= max(self.cfg.min_mask_region_area, 1))
        total_s = time.perf_counter() - start
        profile = {**counts, "total_s": total_s, "masks": len(keep)}
        # With the overlap, decoder_s is partly hidden behind post-processing; decoder_wait_s is what it added.
        profile["postprocess_s"] = total_s - profile["encoder_s"] - profile["decoder_wait_s"]
        log.info(
            "%s: %d masks on %dx%d in %.2f s (encoder %.2f s, %d passes; decoder %.2f s, %d prompts)", self.name,
            len(keep), image.shape[1], image.shape[0], total_s, profile["encoder_s"], profile["encoder_passes"],
            profile["decoder_s"], profile["decoder_prompts"],
        )  # fmt: skip
        settings = _generator_settings(self.cfg, self.name.removeprefix("sam_fast_"))
        return Segmentation(
            bbox_xyxy=boxes[keep].reshape(-1, 4),
            crops=tuple(crops[i] for i in keep),
            image_hw=(int(image.shape[0]), int(image.shape[1])),
            segmenter=self.name,
            config={**settings, "generator": "fast"},
            tissue_area_px=int(tissue_mask_on_image(image).sum()),
            profile={k: round(v, 4) if isinstance(v, float) else v for k, v in profile.items()},
        )

    def _timed(self, counts: dict[str, float], key: str, start: float) -> None:
        """Add the seconds since ``start`` to ``counts[key]`` (GPU work finished first)."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        counts[key] += time.perf_counter() - start

    def _generate(self, image: np.ndarray, counts: dict[str, float]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(K, 4) int64 exclusive boxes and K bool crops, before the final area filter."""
        import torch
        from segment_anything.utils.amg import generate_crop_boxes
        from torchvision.ops import batched_nms, box_area

        image_hw = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layer_idxs = generate_crop_boxes(image_hw, self.cfg.crop_n_layers, CROP_OVERLAP_RATIO)
        images, resized_hw = self._preprocess(image, crop_boxes)
        embeddings = self._encode(images, counts)
        prompts = [
            self._prompts(box, layer, resized_hw[i])
            for i, (box, layer) in enumerate(zip(crop_boxes, layer_idxs, strict=True))
        ]
        batches = [
            (i, s) for i, (coords, _) in enumerate(prompts) for s in range(0, len(coords), self.points_per_batch)
        ]

        def decode(batch: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
            i, s = batch
            coords, labels = prompts[i]
            stop = s + self.points_per_batch
            return self._decode(embeddings[i : i + 1], coords[s:stop], labels[s:stop], counts)

        per_crop: list[list[Candidates]] = [[] for _ in crop_boxes]
        for (i, _), (low_res, iou) in zip(batches, self._decoded(decode, batches, counts), strict=True):
            per_crop[i].append(self._filter(low_res, iou, i, crop_boxes[i], resized_hw[i], image_hw))
        data = Candidates.cat([self._crop_nms(parts) for parts in per_crop])
        crop_xyxy = torch.tensor(crop_boxes, dtype=torch.int64, device=self.device)
        if len(crop_boxes) > 1:  # duplicates between crops: prefer masks from smaller crops, as upstream
            offsets = crop_xyxy[data.crop][:, [0, 1, 0, 1]]
            scores = 1 / box_area(crop_xyxy[data.crop])
            keep = batched_nms((data.boxes + offsets).float(), scores, torch.zeros_like(data.crop), CROP_NMS_THRESH)
            data = data.select(keep)
        boxes_image, masks = self.renderer.render(data, crop_boxes, resized_hw)
        if self.cfg.min_mask_region_area > 0:
            boxes_image, masks = remove_small_regions(
                boxes_image, masks, image_hw, self.cfg.min_mask_region_area, self.cfg.box_nms_thresh
            )
        return boxes_image, masks

    def _preprocess(self, image: np.ndarray, crop_boxes: list[list[int]]) -> tuple[torch.Tensor, list]:
        """(B, 3, S, S) encoder input of every crop and each crop's resized (H', W')."""
        import torch
        from segment_anything.utils.transforms import ResizeLongestSide

        resize = ResizeLongestSide(self.img_size)
        batch = torch.zeros((len(crop_boxes), 3, self.img_size, self.img_size), device=self.device)
        resized_hw = []
        for i, (x0, y0, x1, y1) in enumerate(crop_boxes):
            # PIL bilinear resize of the uint8 crop, as SamPredictor.set_image: same encoder input as upstream.
            resized = torch.as_tensor(resize.apply_image(image[y0:y1, x0:x1]), device=self.device)
            h, w = resized.shape[:2]
            batch[i, :, :h, :w] = (resized.permute(2, 0, 1).float() - self._mean) / self._std
            resized_hw.append((h, w))
        return batch, resized_hw

    def _encode(self, images: torch.Tensor, counts: dict[str, float]) -> torch.Tensor:
        import torch

        start = time.perf_counter()
        step = self.encoder_batch_size or len(images)
        outs = [self._tensor(self.encoder(images[i : i + step])) for i in range(0, len(images), step)]
        counts["encoder_passes"] += len(images)
        self._timed(counts, "encoder_s", start)
        return torch.cat(outs)

    def _prompts(
        self, crop_box: list[int], layer: int, resized_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A crop's point grid as decoder inputs: (P, 1, 2) float32 encoder-input xy, (P, 1) float32 labels 1."""
        import torch

        x0, y0, x1, y1 = crop_box
        crop_hw = (y1 - y0, x1 - x0)
        points_crop_xy = self.point_grids[layer] * np.array(crop_hw[::-1])[None]
        # ResizeLongestSide.apply_coords: crop px -> encoder-input px, per axis.
        scale_xy = np.array([resized_hw[1] / crop_hw[1], resized_hw[0] / crop_hw[0]])
        coords = torch.as_tensor(points_crop_xy * scale_xy, dtype=torch.float32, device=self.device)[:, None]
        return coords, torch.ones((len(coords), 1), dtype=torch.float32, device=self.device)

    def _decode(
        self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor, counts: dict[str, float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder call: (P * 3, h, w) logits and (P * 3,) predicted IoUs; its time goes to ``decoder_s``."""
        import torch

        called = time.perf_counter()
        with torch.inference_mode():  # inference mode is per thread: this may run in the overlap worker
            low_res, iou = self.decoder(embedding, coords, labels)
            low_res, iou = self._tensor(low_res).flatten(0, 1), self._tensor(iou).flatten(0, 1)
        counts["decoder_calls"] += 1
        counts["decoder_prompts"] += len(coords)
        self._timed(counts, "decoder_s", called)
        return low_res, iou

    def _decoded(self, decode: Callable[[Any], Any], batches: Sequence[Any], counts: dict[str, float]) -> Iterator[Any]:
        """``decode(b)`` of every batch, in order; the main thread's waits for them go to ``decoder_wait_s``.

        With ``overlap_decoder``, batch k + 1 is decoded in a worker thread while the caller post-processes batch k.
        """
        if not self.overlap_decoder:
            for batch in batches:
                waited = time.perf_counter()
                out = decode(batch)
                counts["decoder_wait_s"] += time.perf_counter() - waited
                yield out
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-decoder") as pool:
            pending = pool.submit(decode, batches[0]) if batches else None
            for k in range(len(batches)):
                waited = time.perf_counter()
                out = pending.result()  # type: ignore[union-attr]
                counts["decoder_wait_s"] += time.perf_counter() - waited
                pending = pool.submit(decode, batches[k + 1]) if k + 1 < len(batches) else None
                yield out

    def _filter(
        self,
        low_res: torch.Tensor,
        iou: torch.Tensor,
        crop_index: int,
        crop_box: list[int],
        resized_hw: tuple[int, int],
        image_hw: tuple[int, int],
    ) -> Candidates:
        """One decoder batch's masks that pass the IoU, stability and crop-edge filters (upstream's order)."""
        import torch
        from segment_anything.utils.amg import is_box_near_crop_edge

        x0, y0, x1, y1 = crop_box
        if self.cfg.pred_iou_thresh > 0.0:  # exact before upsampling: the IoU head does not see the masks
            keep = iou > self.cfg.pred_iou_thresh
            low_res, iou = low_res[keep], iou[keep]
        stability, boxes = self.renderer.stability_and_boxes(low_res, resized_hw, (y1 - y0, x1 - x0))
        part = Candidates(low_res, iou, stability, boxes, torch.full_like(boxes[:, 0], crop_index))
        if self.cfg.stability_score_thresh > 0.0:
            part = part.select(part.stability >= self.cfg.stability_score_thresh)
        near_edge = is_box_near_crop_edge(part.boxes, crop_box, [0, 0, image_hw[1], image_hw[0]])
        return part.select(~near_edge)

    def _crop_nms(self, parts: list[Candidates]) -> Candidates:
        """NMS within one crop's candidates (upstream's per-crop ``box_nms_thresh`` round)."""
        import torch
        from torchvision.ops import batched_nms

        data = Candidates.cat(parts)
        keep = batched_nms(data.boxes.float(), data.iou, torch.zeros_like(data.crop), self.cfg.box_nms_thresh)
        return data.select(keep)

    def _tensor(self, x: Any) -> torch.Tensor:
        import torch

        return torch.as_tensor(x, device=self.device)


def _numpy32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
