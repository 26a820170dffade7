"""Per-slide pictures for the cohort report, written by ``infer`` while the slide is open.

Cheap: a small thumbnail (already read for the heatmap) and a dozen patch reads.

Under ``<out>/report_assets/<slide_id>/``: ``attention.jpg`` (attention over a small thumbnail), ``segments.jpg``
(each patch coloured by its segment, segment borders drawn) and ``top01.jpg``... (the most-attended patches,
read through the slide reader). The report JSON lists them relative to the output folder.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.io_atomic import atomic_path

if TYPE_CHECKING:
    from sammil_deploy.slide import SlideReader

ASSETS_DIR = "report_assets"
THUMBNAIL_LONG_SIDE_PX = 512
CROP_SIDE_PX = 160
MAX_CROPS = 12
JPEG_QUALITY = 85
NO_SEGMENT_RGB = (150, 150, 150)
BORDER_RGB = (20, 20, 20)


def write_report_assets(
    out_dir: Path,
    reader: SlideReader,
    thumbnail: np.ndarray,
    coords_level0_xy: np.ndarray,
    patch_size_level0_px: int,
    attention01: np.ndarray,
    segment_id: np.ndarray,
    top_patches: Sequence[dict[str, Any]],
) -> tuple[dict[str, Any], list[Path]]:
    """Write the slide's report pictures (each atomically).

    Args:
        out_dir: Output root of the run.
        reader: The open slide (top patches are read from it).
        thumbnail: (h, w, 3) uint8 RGB thumbnail of the whole slide (any size; it is shrunk here).
        coords_level0_xy: (N, 2) int top-left patch corners, level-0 px.
        patch_size_level0_px: Patch side, level-0 px.
        attention01: (N,) display attention in [0, 1] (``viz.heatmap.scale_attention``).
        segment_id: (N,) int segment of each patch, -1 for none.
        top_patches: The report's ``attention.top_patches`` (``x_level0``, ``y_level0``), best first.

    Returns:
        ``{"attention", "segments", "crops": [...]}`` paths relative to ``out_dir`` (crops in ``top_patches``
        order, at most :data:`MAX_CROPS`), and the absolute paths written (to remove them if the slide fails).
    """
    from sammil_deploy.viz.heatmap import colormap_rgb, paint_patches

    info = reader.info
    folder = Path(out_dir) / ASSETS_DIR / info.slide_id
    folder.mkdir(parents=True, exist_ok=True)
    small = shrink(thumbnail, THUMBNAIL_LONG_SIDE_PX)
    geometry = (info.dimensions_wh, coords_level0_xy, patch_size_level0_px)
    written: list[Path] = []
    try:
        heat, _, _ = paint_patches(small, *geometry, colormap_rgb(attention01), alpha=0.55)
        written.append(save_jpeg(folder / "attention.jpg", heat))
        written.append(save_jpeg(folder / "segments.jpg", segment_overlay(small, *geometry, segment_id)))
        for rank, patch in enumerate(top_patches[:MAX_CROPS], start=1):
            crop = read_patch(reader, (int(patch["x_level0"]), int(patch["y_level0"])), patch_size_level0_px)
            written.append(save_jpeg(folder / f"top{rank:02d}.jpg", crop))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    rel = [str(p.relative_to(out_dir)) for p in written]
    return {"attention": rel[0], "segments": rel[1], "crops": rel[2:]}, written


def shrink(image: np.ndarray, long_side_px: int) -> np.ndarray:
    """``image`` resized (area filter) so its long side is at most ``long_side_px``."""
    import cv2

    h, w = image.shape[:2]
    scale = long_side_px / max(h, w)
    if scale >= 1.0:
        return np.ascontiguousarray(image[..., :3])
    size_wh = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(image[..., :3]), size_wh, interpolation=cv2.INTER_AREA)


def segment_colours(segment_id: np.ndarray) -> np.ndarray:
    """(N,) segment ids → (N, 3) uint8 RGB: a stable, well-spread hue per id; grey for -1 (no segment)."""
    import colorsys

    ids = np.asarray(segment_id, np.int64)
    palette = {
        int(s): tuple(round(255 * c) for c in colorsys.hsv_to_rgb((0.618034 * (int(s) + 1)) % 1.0, 0.75, 0.95))
        for s in np.unique(ids[ids >= 0])
    }
    return np.array([palette.get(int(s), NO_SEGMENT_RGB) for s in ids], np.uint8).reshape(-1, 3)


def segment_overlay(
    thumbnail: np.ndarray,
    slide_wh_level0: tuple[int, int],
    coords_level0_xy: np.ndarray,
    patch_size_level0_px: int,
    segment_id: np.ndarray,
) -> np.ndarray:
    """Patches coloured by segment over the thumbnail, with a dark line where neighbouring patches' segments differ.

    Returns:
        (h, w, 3) uint8 RGB image.
    """
    from sammil_deploy.viz.heatmap import paint_patches

    image, x0y0, x1y1 = paint_patches(
        thumbnail, slide_wh_level0, coords_level0_xy, patch_size_level0_px, segment_colours(segment_id), alpha=0.5
    )
    h, w = image.shape[:2]
    labels = np.full((h, w), -2, np.int64)  # -2: no patch, -1: patch in no segment
    for (ax, ay), (bx, by), sid in zip(x0y0, x1y1, np.asarray(segment_id, np.int64), strict=True):
        labels[ay:by, ax:bx] = sid
    border = np.zeros((h, w), bool)
    border[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    border[1:, :] |= labels[1:, :] != labels[:-1, :]
    image[border & (labels != -2)] = BORDER_RGB
    return image


def read_patch(reader: SlideReader, xy_level0: tuple[int, int], patch_size_level0_px: int) -> np.ndarray:
    """One patch as a :data:`CROP_SIDE_PX` square RGB image, read from the coarsest level that is fine enough."""
    info = reader.info
    level = info.best_level_for_downsample(max(1.0, patch_size_level0_px / CROP_SIDE_PX))
    side_px = max(1, round(patch_size_level0_px / info.level_downsamples[level]))
    region = reader.read_region(xy_level0, level, (side_px, side_px))
    return shrink(region, CROP_SIDE_PX)


def save_jpeg(path: Path, image: np.ndarray) -> Path:
    """Write an RGB uint8 image as JPEG atomically (disk full or read-only: :class:`OutputError`)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return path


@functools.lru_cache(maxsize=1)
def machine_summary() -> dict[str, str]:
    """The machine a slide ran on, for the report: host name and one hardware line (probed once per process)."""
    from sammil_deploy.environment import capture_environment, hardware_label

    env = capture_environment()
    return {"hostname": platform.node(), "hardware": hardware_label(env), "platform": str(env.get("platform"))}
