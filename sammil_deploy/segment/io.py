"""Save/load a segmentation (compressed .npz) and render a coloured overlay PNG for a person to check.

``.npz`` layout (schema 1): ``image`` (H, W, 3) uint8 SAM image; ``label_map`` (H, W) int32 (-1 = no mask,
smaller mask wins); ``bbox_xyxy`` (K, 4) int64; ``crop_bits`` uint8, the concatenated row-major crops packed
with ``np.packbits``, ``crop_offsets`` (K + 1,) int64 bit offsets into it; ``areas_px`` (K,) int64; scalars
``origin_level0_xy``, ``bbox_level0``, ``downsample``, ``level``, ``level_downsample``,
``residual_downsample``, ``tissue_area_px``; strings ``segmenter``, ``config_json``; ``schema_version``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sammil_deploy.errors import SegmentationError
from sammil_deploy.io_atomic import atomic_path, write_png
from sammil_deploy.segment.sam_image import SamImage
from sammil_deploy.segment.segmentation import BACKGROUND, Segmentation

SCHEMA_VERSION = 1
_GOLDEN = 0.6180339887


def save_segmentation(path: Path, sam_image: SamImage, segmentation: Segmentation) -> Path:
    """Write the SAM image, its masks and label map to ``path`` (.npz) atomically; returns ``path``."""
    path = Path(path)
    flat = [c.ravel() for c in segmentation.crops]
    offsets = np.cumsum([0, *(len(f) for f in flat)]).astype(np.int64)
    bits = np.packbits(np.concatenate(flat)) if flat else np.zeros(0, np.uint8)
    arrays = {
        "schema_version": np.int64(SCHEMA_VERSION),
        "image": sam_image.image,
        "label_map": segmentation.label_map,
        "bbox_xyxy": segmentation.bbox_xyxy.astype(np.int64),
        "crop_bits": bits,
        "crop_offsets": offsets,
        "areas_px": segmentation.areas_px,
        "origin_level0_xy": np.asarray(sam_image.origin_level0_xy, np.int64),
        "bbox_level0": np.asarray(sam_image.bbox_level0, np.int64),
        "downsample": np.float64(sam_image.downsample),
        "level": np.int64(sam_image.level),
        "level_downsample": np.float64(sam_image.level_downsample),
        "residual_downsample": np.int64(sam_image.residual_downsample),
        "tissue_area_px": np.int64(segmentation.tissue_area_px),
        "segmenter": np.str_(segmentation.segmenter),
        "config_json": np.str_(json.dumps(segmentation.config, sort_keys=True, default=str)),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_segmentation(path: Path) -> tuple[SamImage, Segmentation]:
    """Read a file written by ``save_segmentation``.

    Raises:
        SegmentationError: If the file is missing, not such a file, or of another schema version.
    """
    path = Path(path)
    if not path.is_file():
        raise SegmentationError(f"{path}: segmentation file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise SegmentationError(f"{path.name}: not a readable segmentation .npz ({err}); re-run segmentation") from None
    if int(data.get("schema_version", -1)) != SCHEMA_VERSION:
        raise SegmentationError(
            f"{path.name}: segmentation schema {data.get('schema_version')} is not {SCHEMA_VERSION}; re-run "
            "segmentation with this version of sammil-deploy"
        )
    image = data["image"]
    boxes, offsets = data["bbox_xyxy"], data["crop_offsets"]
    bits = np.unpackbits(data["crop_bits"], count=int(offsets[-1])).astype(bool)
    crops = tuple(
        bits[offsets[i] : offsets[i + 1]].reshape(int(y1 - y0), int(x1 - x0))
        for i, (x0, y0, x1, y1) in enumerate(boxes)
    )
    sam_image = SamImage(
        image=image,
        origin_level0_xy=tuple(int(v) for v in data["origin_level0_xy"]),
        downsample=float(data["downsample"]),
        level=int(data["level"]),
        level_downsample=float(data["level_downsample"]),
        residual_downsample=int(data["residual_downsample"]),
        bbox_level0=tuple(int(v) for v in data["bbox_level0"]),
    )
    segmentation = Segmentation(
        bbox_xyxy=boxes.astype(np.int64),
        crops=crops,
        image_hw=(int(image.shape[0]), int(image.shape[1])),
        segmenter=str(data["segmenter"]),
        config=json.loads(str(data["config_json"])),
        tissue_area_px=int(data["tissue_area_px"]),
    )
    return sam_image, segmentation


def segment_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB, well-separated hues (golden-ratio steps), deterministic."""
    import cv2

    if n == 0:
        return np.zeros((0, 3), np.uint8)
    hue = ((np.arange(n) * _GOLDEN) % 1.0 * 179).astype(np.uint8)
    hsv = np.stack([hue, np.full(n, 200, np.uint8), np.full(n, 235, np.uint8)], axis=1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def render_overlay(image: np.ndarray, segmentation: Segmentation, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: each label-map segment tinted in its colour, segment borders in black."""
    import cv2

    labels = segmentation.label_map
    colours = segment_colours(segmentation.n_masks)
    out = image.astype(np.float32)
    painted = labels != BACKGROUND
    out[painted] = (1 - alpha) * out[painted] + alpha * colours[labels[painted]]
    out = out.astype(np.uint8)
    # A pixel is a border where its 3x3 neighbourhood holds another label.
    lab = labels.astype(np.float32)
    kernel = np.ones((3, 3), np.uint8)
    border = cv2.dilate(lab, kernel) != cv2.erode(lab, kernel)
    out[border & (cv2.dilate(painted.astype(np.uint8), kernel) > 0)] = 0
    return out


def save_overlay_png(path: Path, image: np.ndarray, segmentation: Segmentation, alpha: float = 0.45) -> Path:
    """Write ``render_overlay`` as a PNG next to nothing else, atomically; returns ``path``."""
    return write_png(path, render_overlay(image, segmentation, alpha))
