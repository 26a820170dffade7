"""Attention heatmap: each patch's attention painted over the slide thumbnail, patch-aligned, with a colour bar.

Raw attention is ~1/N and heavy-tailed, so it is scaled for display: ``rank`` (each patch's percentile rank
among the slide's patches, uniform colours, the default) or ``percentile`` (linear between the 1st and 99th
percentile, clipped: keeps relative magnitudes). The image is built from the thumbnail only: no full-resolution
array is ever held.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sammil_deploy.errors import ConfigError

SCALINGS = ("rank", "percentile")
_BAR_LABELS = {"rank": ("top", "bottom"), "percentile": ("p99", "p1")}
OUTLINE_RGB = (60, 60, 60)  # the heatmap's patch outlines
MIN_OUTLINED_PATCH_PX = 6


def scale_attention(attention: np.ndarray, mode: str = "rank") -> np.ndarray:
    """(N,) attention → (N,) float64 display values in [0, 1].

    Args:
        attention: Per-patch attention (any positive scale).
        mode: ``rank`` (percentile rank, ties share their mean rank) or ``percentile`` (linear p1..p99, clipped).

    Raises:
        ConfigError: Unknown ``mode``.
    """
    values = np.asarray(attention, np.float64)
    if mode not in SCALINGS:
        raise ConfigError(f"heatmap scaling must be one of {list(SCALINGS)}, got {mode!r}")
    n = len(values)
    if n == 0:
        return values
    if n == 1:
        return np.ones(1)
    if mode == "rank":
        order = np.argsort(values, kind="stable")
        ranks = np.empty(n, np.float64)
        ranks[order] = np.arange(n, dtype=np.float64)
        # Equal values get their group's mean rank, so ties never get different colours.
        _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=ranks)
        return (sums / counts)[inverse] / (n - 1)
    low, high = np.percentile(values, [1.0, 99.0])
    if high <= low:
        return np.full(n, 0.5)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def colormap_rgb(values01: np.ndarray) -> np.ndarray:
    """(N,) values in [0, 1] → (N, 3) uint8 RGB on OpenCV's JET map (blue = low, red = high)."""
    import cv2

    levels = np.clip(np.round(np.asarray(values01) * 255), 0, 255).astype(np.uint8).reshape(-1, 1)
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET)[:, 0, ::-1].copy()


def render_heatmap(painted: np.ndarray, *, title: str = "", scaling: str = "rank") -> np.ndarray:
    """A heatmap figure: the painted thumbnail, a title strip above and a colour bar right.

    ``painted`` comes from :func:`paint_patches` with :func:`colormap_rgb` colours and :data:`OUTLINE_RGB` outlines.

    Args:
        painted: (h, w, 3) uint8 RGB thumbnail with the patches painted.
        title: Text written above the image (slide id, prediction).
        scaling: Named on the colour bar (``rank`` or ``percentile``).

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    return _with_bar_and_title(painted, title, _BAR_LABELS.get(scaling, ("high", "low")), scaling)


def paint_patches(
    thumbnail: np.ndarray,
    slide_wh_level0: tuple[int, int],
    coords_level0_xy: np.ndarray,
    patch_size_level0_px: int,
    colours_rgb: np.ndarray,
    *,
    alpha: float = 0.5,
    outline_rgb: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blend one colour per patch over a thumbnail (patch-aligned, no gaps, no double-painted rows).

    Args:
        thumbnail: (h, w, 3) uint8 RGB thumbnail of the whole slide.
        slide_wh_level0: Level-0 (width, height) the thumbnail shows.
        coords_level0_xy: (N, 2) int top-left corners of the patches, level-0 px.
        patch_size_level0_px: Patch side, level-0 px.
        colours_rgb: (N, 3) uint8 colour of each patch.
        alpha: Opacity of the colours over the tissue.
        outline_rgb: Draw each patch's outline in this colour when the (first) patch's box is at least
            :data:`MIN_OUTLINED_PATCH_PX` wide and high in the thumbnail (big enough to see); None: no outlines.

    Returns:
        The blended (h, w, 3) uint8 image and the patches' half-open thumbnail boxes: (N, 2) top-left and
        (N, 2) bottom-right (exclusive) int64 pixel corners.
    """
    image = np.ascontiguousarray(thumbnail[..., :3], dtype=np.uint8)
    h, w = image.shape[:2]
    scale_xy = np.array([w / slide_wh_level0[0], h / slide_wh_level0[1]])
    coords = np.asarray(coords_level0_xy, np.float64).reshape(-1, 2)
    # Half-open pixel boxes: neighbouring patches tile the thumbnail without gaps or double-painted rows.
    x0y0 = np.clip(np.floor(coords * scale_xy).astype(np.int64), 0, [w, h])
    x1y1 = np.clip(np.floor((coords + patch_size_level0_px) * scale_xy).astype(np.int64), 0, [w, h])
    x1y1 = np.maximum(x1y1, np.minimum(x0y0 + 1, [w, h]))
    paint = image.copy()
    covered = np.zeros((h, w), bool)
    for (ax, ay), (bx, by), colour in zip(x0y0, x1y1, colours_rgb, strict=True):
        paint[ay:by, ax:bx] = colour
        covered[ay:by, ax:bx] = True
    blended = image.copy()
    mixed = (1 - alpha) * image[covered].astype(np.float32) + alpha * paint[covered].astype(np.float32)
    blended[covered] = np.round(mixed).astype(np.uint8)
    if outline_rgb is not None and len(x0y0) and min(x1y1[0] - x0y0[0]) >= MIN_OUTLINED_PATCH_PX:
        import cv2

        for (ax, ay), (bx, by) in zip(x0y0, x1y1, strict=True):
            cv2.rectangle(blended, (int(ax), int(ay)), (int(bx) - 1, int(by) - 1), outline_rgb, 1)
    return blended, x0y0, x1y1


def _with_bar_and_title(image: np.ndarray, title: str, labels: Sequence[str], scaling: str) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.4, min(h, w) / 900)
    thick = max(1, round(scale * 1.5))
    (_, text_h), _ = cv2.getTextSize("Ag", font, scale, thick)
    bar_w, margin = max(12, w // 40), max(6, text_h // 2)
    label_w = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t in (*labels, "attention", scaling))
    panel_w = bar_w + label_w + 3 * margin
    title_h = 2 * text_h + 2 * margin if title else 0
    canvas = np.full((h + title_h, w + panel_w, 3), 255, np.uint8)
    canvas[title_h:, :w] = image
    if title:
        cv2.putText(canvas, title, (margin, margin + text_h), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    top, bottom = title_h + 2 * text_h + 2 * margin, title_h + h - 2 * text_h - 2 * margin
    bottom = max(bottom, top + 2)
    ramp = colormap_rgb(np.linspace(1.0, 0.0, bottom - top))
    x0 = w + margin
    canvas[top:bottom, x0 : x0 + bar_w] = ramp[:, None, :]
    cv2.rectangle(canvas, (x0, top), (x0 + bar_w - 1, bottom - 1), (0, 0, 0), 1)
    tx = x0 + bar_w + margin
    cv2.putText(canvas, "attention", (x0, top - text_h - margin), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    cv2.putText(canvas, f"({scaling})", (x0, top - margin // 2), font, scale * 0.8, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(canvas, labels[0], (tx, top + text_h), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    cv2.putText(canvas, labels[1], (tx, bottom), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return canvas
