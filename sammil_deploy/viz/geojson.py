"""QuPath-importable GeoJSON of the patch tiles, with attention and segment ids as measurements.

QuPath (0.4+, File → Import objects, or drag and drop) reads a ``FeatureCollection`` whose features carry
``properties.objectType`` (``"tile"`` here: a detection-like object QuPath shows and measures but does not treat
as an annotation), ``properties.classification`` (``{"name", "color"}``; here the patch's SAM segment, so
QuPath colours tiles by segment) and ``properties.measurements`` (a ``{name: number}`` map, shown in the
measurement table and usable for Measure → Show measurement maps, e.g. on ``attention_rank``). Coordinates are
level-0 (full-resolution) pixels with the origin at the top left, as QuPath's own export writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sammil_deploy.io_atomic import write_json

NO_SEGMENT_NAME = "no segment"


def segment_colour(segment_id: int) -> list[int]:
    """A stable, well-spread RGB colour per segment id (golden-ratio hues); grey for no segment."""
    import colorsys

    if segment_id < 0:
        return [160, 160, 160]
    r, g, b = colorsys.hsv_to_rgb((segment_id * 0.618033988749895) % 1.0, 0.65, 0.95)
    return [round(r * 255), round(g * 255), round(b * 255)]


def patch_tiles_geojson(
    coords_level0_xy: np.ndarray,
    patch_size_level0_px: int,
    attention: np.ndarray,
    attention_rank: np.ndarray,
    segment_id: np.ndarray,
    segment_area_px: np.ndarray,
    *,
    slide_id: str,
) -> dict[str, Any]:
    """One ``tile`` Feature per patch, in patch-row order.

    Args:
        coords_level0_xy: (N, 2) int top-left corners, level-0 px.
        patch_size_level0_px: Patch side, level-0 px.
        attention: (N,) float raw attention of the patch rows (softmax over the whole bag).
        attention_rank: (N,) float in [0, 1], the patch's percentile rank (1 = most attended).
        segment_id: (N,) int the patch's segment category (smallest containing mask), -1 for none.
        segment_area_px: (N,) int that mask's area on the SAM image, 0 for none.
        slide_id: Stored in each feature's ``name``.

    Returns:
        A GeoJSON ``FeatureCollection`` dict (``json.dumps``-ready; plain Python numbers).
    """
    coords = np.asarray(coords_level0_xy, np.int64).reshape(-1, 2)
    size = int(patch_size_level0_px)
    colours: dict[int, list[int]] = {}
    features = []
    for row, ((x, y), att, rank, seg, area) in enumerate(
        zip(coords.tolist(), attention.tolist(), attention_rank.tolist(), segment_id.tolist(),
            segment_area_px.tolist(), strict=True)
    ):  # fmt: skip
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        name = NO_SEGMENT_NAME if seg < 0 else f"segment {seg}"
        features.append(
            {
                "type": "Feature",
                "id": f"{slide_id}-patch-{row}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "tile",
                    "name": f"{slide_id} patch {row}",
                    "isLocked": True,
                    "classification": {"name": name, "color": colours.setdefault(seg, segment_colour(seg))},
                    "measurements": {
                        "attention": float(att),
                        "attention_rank": float(rank),
                        "segment_id": int(seg),
                        "segment_area_px": int(area),
                        "patch_row": row,
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: Path, collection: dict[str, Any]) -> Path:
    """Write ``collection`` compactly via ``path.partial`` + rename (never a half-written file)."""
    return write_json(path, collection, compact=True, sort_keys=False)
