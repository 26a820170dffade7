"""Stitched preview: slide thumbnail with tissue contours, holes and the patch grid drawn on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sammil_deploy.patching.grid import PatchGrid
from sammil_deploy.slide import SlideReader
from sammil_deploy.tissue.detect import TissueResult

CONTOUR_RGB = (0, 200, 0)
HOLE_RGB = (0, 60, 255)
GRID_RGB = (40, 40, 40)


def render_preview(
    reader: SlideReader, tissue: TissueResult, grid: PatchGrid | None = None, *, max_size_px: int = 2048
) -> np.ndarray:
    """Thumbnail with tissue contours (green), holes (blue) and patch outlines (thin, dark grey).

    Args:
        reader: Open slide.
        tissue: Contours/holes in level-0 pixels.
        grid: Patches to outline; ``None`` draws tissue only.
        max_size_px: Long side of the thumbnail.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    import cv2

    image = np.ascontiguousarray(reader.thumbnail(max_size_px))
    w0, h0 = reader.info.dimensions_wh
    scale_xy = np.array([image.shape[1] / w0, image.shape[0] / h0])
    line_px = max(1, round(max(image.shape[:2]) / 500))

    if grid is not None and len(grid):
        top_left = np.floor(grid.coords_level0_xy * scale_xy).astype(np.int32)
        bottom_right = np.ceil((grid.coords_level0_xy + grid.patch_size_level0_px) * scale_xy).astype(np.int32) - 1
        # Shade covered area lightly so tissue left without patches stands out, then outline each patch.
        shade = image.copy()
        for (x0, y0), (x1, y1) in zip(top_left, bottom_right, strict=True):
            cv2.rectangle(shade, (int(x0), int(y0)), (int(x1), int(y1)), GRID_RGB, thickness=cv2.FILLED)
        image = cv2.addWeighted(image, 0.8, shade, 0.2, 0)
        for (x0, y0), (x1, y1) in zip(top_left, bottom_right, strict=True):
            cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), GRID_RGB, thickness=1)

    def scaled(polys: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        return [np.round(p * scale_xy).astype(np.int32).reshape(-1, 1, 2) for p in polys]

    cv2.drawContours(image, scaled(tissue.contours_level0_xy), -1, CONTOUR_RGB, line_px, lineType=cv2.LINE_AA)
    holes = [h for hs in tissue.holes_level0_xy for h in hs]
    if holes:
        cv2.drawContours(image, scaled(tuple(holes)), -1, HOLE_RGB, line_px, lineType=cv2.LINE_AA)
    return image


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG via ``path.partial`` + rename."""
    from sammil_deploy.io_atomic import write_png as write_png_atomic

    return write_png_atomic(path, image)
