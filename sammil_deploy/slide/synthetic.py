"""Synthetic whole-slide images: tiled, JPEG-compressed, pyramidal TIFFs that OpenSlide opens, with known truth.

Layout (checked against OpenSlide 4.0.1): a BigTIFF whose top-level IFD chain holds every level at full
resolution (tiled, JPEG/YCbCr 2x2, level ``i`` ``level_downsample**i`` times smaller), X/YResolution in pixels per
centimetre on each level.

* ``vendor="aperio"`` (default): the first ImageDescription is an Aperio-style header
  (``Aperio Image Library ...|AppMag = 40|MPP = 0.25|...``) and a stripped thumbnail IFD follows level 0, so
  OpenSlide's Aperio reader opens it (``openslide.vendor = aperio``) and reports ``openslide.mpp-x/-y`` *and*
  ``openslide.objective-power``, like a real .svs. The header says ``Generator = sammil-deploy synthetic``.
* ``vendor="generic"``: no vendor header; OpenSlide's generic-tiff reader takes ``openslide.mpp-x/-y`` from the
  resolution tags (centimetre unit) but reports no objective power.

Pixels stream tile by tile (rendered and JPEG-encoded on a thread pool), so a 40000 x 40000 slide never lives in
memory; every level is rendered from the continuous model in :mod:`sammil_deploy.slide.synthetic_model`.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sammil_deploy.errors import SlideError
from sammil_deploy.io_atomic import atomic_path
from sammil_deploy.slide.synthetic_spec import SyntheticSlideSpec

if TYPE_CHECKING:
    from sammil_deploy.slide.synthetic_model import SlideModel

log = logging.getLogger(__name__)

_BACKGROUND_VARIANTS = 4  # cached pre-encoded plain-background tiles per level


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """Ground truth of a synthetic slide on a coarse grid.

    Attributes:
        tissue_mask: ``(h, w)`` bool, True where the model's tissue outline (before the few-micron pixel jitter
            of the fuzzy edge) contains the cell centre.
        tumour_mask: ``(h, w)`` bool, True where the cell centre is tumour (always inside ``tissue_mask``).
        mask_downsample: Level-0 pixels per mask pixel (mask pixel ``(i, j)`` covers level-0
            ``[j*s, (j+1)*s) x [i*s, (i+1)*s)``).
        dimensions_wh: Level-0 (width, height).
        level_downsamples: Downsample of each level written.
        mpp: Microns per level-0 pixel.
    """

    tissue_mask: np.ndarray
    tumour_mask: np.ndarray
    mask_downsample: float
    dimensions_wh: tuple[int, int]
    level_downsamples: tuple[int, ...]
    mpp: float

    @property
    def has_tumour(self) -> bool:
        """Whether any tumour was drawn."""
        return bool(self.tumour_mask.any())

    def tumour_fraction(self, xy_level0: tuple[int, int], size_px: tuple[int, int]) -> float:
        """Area fraction of the level-0 box ``xy_level0 + [0, size_px)`` (size as (w, h)) that is tumour."""
        return self._fraction(self.tumour_mask, xy_level0, size_px)

    def tissue_fraction(self, xy_level0: tuple[int, int], size_px: tuple[int, int]) -> float:
        """Area fraction of the level-0 box ``xy_level0 + [0, size_px)`` (size as (w, h)) that is tissue."""
        return self._fraction(self.tissue_mask, xy_level0, size_px)

    def _fraction(self, mask: np.ndarray, xy_level0: tuple[int, int], size_px: tuple[int, int]) -> float:
        # Exact for a piecewise-constant mask: weight each mask cell by its overlap with the box.
        wy = _overlaps(xy_level0[1], size_px[1], self.mask_downsample, mask.shape[0])
        wx = _overlaps(xy_level0[0], size_px[0], self.mask_downsample, mask.shape[1])
        area = float(size_px[0]) * float(size_px[1])
        return float(wy @ mask.astype(np.float64) @ wx) / area if area > 0 else 0.0


def _overlaps(start: float, length: float, cell: float, n: int) -> np.ndarray:
    """Length of overlap (level-0 px) of ``[start, start + length)`` with each of ``n`` cells of size ``cell``."""
    edges = np.arange(n + 1, dtype=np.float64) * cell
    lo = np.maximum(edges[:-1], start)
    hi = np.minimum(edges[1:], start + length)
    return np.maximum(hi - lo, 0.0)


def synthetic_truth(spec: SyntheticSlideSpec) -> SyntheticTruth:
    """The truth of ``spec`` without writing the slide (the same model the writer draws)."""
    from sammil_deploy.slide.synthetic_model import SlideModel

    return _truth_of(SlideModel(spec))


def _truth_of(model: SlideModel) -> SyntheticTruth:
    spec = model.spec
    tissue = model.fields[..., 0] > 0
    return SyntheticTruth(
        tissue_mask=tissue,
        tumour_mask=tissue & (model.fields[..., 1] > 0.5),
        mask_downsample=float(model.field_pitch_px),
        dimensions_wh=(spec.width_px, spec.height_px),
        level_downsamples=spec.level_downsamples,
        mpp=spec.mpp,
    )


def write_synthetic_slide(
    path: Path | str,
    spec: SyntheticSlideSpec,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticTruth:
    """Write ``spec`` as a pyramidal tiled JPEG TIFF at ``path`` (atomically, via ``path.partial``).

    Args:
        path: Output file; ``.svs`` suits ``vendor="aperio"``, ``.tif`` ``vendor="generic"`` (OpenSlide detects
            the format from the content, not the suffix).
        spec: What to draw.
        workers: Threads rendering and encoding tiles (default: CPU count, at most 8).
        progress: Called as ``progress(tiles_done, tiles_total)`` over all levels.

    Returns:
        The slide's ground truth (tissue and tumour masks).

    Raises:
        SlideError: If the file cannot be written (the partial file is removed).
    """
    import tifffile

    from sammil_deploy.slide.synthetic_model import SlideModel

    path = Path(path)
    if not path.parent.is_dir():
        raise SlideError(f"{path}: output folder {path.parent} does not exist; create it first")
    model = SlideModel(spec)
    workers = workers or min(8, os.cpu_count() or 1)
    tiles_total = sum(math.ceil(w / spec.tile_px) * math.ceil(h / spec.tile_px) for w, h in spec.level_dimensions_wh)
    counter = _Progress(tiles_total, progress)
    try:
        with (
            atomic_path(path, make_parent=False) as tmp,
            tifffile.TiffWriter(tmp, bigtiff=True) as tif,
            ThreadPoolExecutor(workers) as pool,
        ):
            for level, (d, (w, h)) in enumerate(zip(spec.level_downsamples, spec.level_dimensions_wh, strict=True)):
                tif.write(
                    _encoded_tiles(model, d, (w, h), pool, 4 * workers, counter),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(spec.tile_px, spec.tile_px),
                    compression="jpeg",
                    photometric="rgb",
                    subsampling=(2, 2),
                    resolution=(1e4 / (spec.mpp * d), 1e4 / (spec.mpp * d)),
                    resolutionunit="CENTIMETER",
                    subfiletype=0 if level == 0 else 1,
                    description=_description(spec, path.stem) if level == 0 else None,
                    software="sammil-deploy",
                    metadata=None,
                )
                if level == 0 and spec.vendor == "aperio":
                    tif.write(
                        _thumbnail(model), photometric="rgb", compression="jpeg", subfiletype=1,
                        software="sammil-deploy", metadata=None,
                    )  # fmt: skip
    except OSError as err:  # environment faults are already OutputError; this is e.g. a tifffile failure
        raise SlideError(f"{path}: cannot write the synthetic slide ({err})") from None
    log.debug("wrote %s (%d levels, %d tiles)", path, len(spec.level_downsamples), tiles_total)
    return _truth_of(model)


class _Progress:
    """Counts written tiles and forwards them to the caller's callback."""

    def __init__(self, total: int, callback: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self._callback = total, 0, callback

    def step(self) -> None:
        self.done += 1
        if self._callback is not None:
            self._callback(self.done, self.total)


def _encoded_tiles(
    model: SlideModel, downsample: int, size_wh: tuple[int, int], pool: Executor, prefetch: int, counter: _Progress
) -> Iterator[bytes]:
    """JPEG bytes of every tile of one level in TIFF order (row-major), rendered ``prefetch`` tiles ahead."""
    t = model.spec.tile_px
    background = [_encode(model.background_tile(v), model.spec.jpeg_quality) for v in range(_BACKGROUND_VARIANTS)]

    def render(xy: tuple[int, int]) -> bytes:
        tile = model.render_tile(downsample, xy[0], xy[1])
        if tile is None:  # no tissue: reuse a pre-encoded background tile (white noise, so no visible seam)
            return background[(xy[0] // t * 7 + xy[1] // t * 13) % _BACKGROUND_VARIANTS]
        return _encode(tile, model.spec.jpeg_quality)

    origins = ((x, y) for y in range(0, size_wh[1], t) for x in range(0, size_wh[0], t))
    pending: collections.deque = collections.deque()
    for xy in origins:
        pending.append(pool.submit(render, xy))
        if len(pending) >= prefetch:
            yield pending.popleft().result()
            counter.step()
    while pending:
        yield pending.popleft().result()
        counter.step()


def _encode(tile: np.ndarray, quality: int) -> bytes:
    """JPEG as the TIFF tags written say: RGB in, YCbCr 4:2:0 stored."""
    import imagecodecs

    return imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))


def _thumbnail(model: SlideModel, long_side_px: int = 768) -> np.ndarray:
    """Aperio-style thumbnail: the coarsest level, resized so its long side is at most ``long_side_px``."""
    import cv2

    spec = model.spec
    d = spec.level_downsamples[-1]
    w, h = spec.level_dimensions_wh[-1]
    t = spec.tile_px
    image = np.empty((math.ceil(h / t) * t, math.ceil(w / t) * t, 3), np.uint8)
    for y in range(0, h, t):
        for x in range(0, w, t):
            tile = model.render_tile(d, x, y)
            image[y : y + t, x : x + t] = model.background_tile(0) if tile is None else tile
    image = image[:h, :w]
    scale = long_side_px / max(w, h)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def _description(spec: SyntheticSlideSpec, name: str) -> str:
    """Level-0 ImageDescription: an Aperio-style header (pipe-separated key = value) or a plain note."""
    w, h, t = spec.width_px, spec.height_px, spec.tile_px
    if spec.vendor == "generic":
        return f"sammil-deploy synthetic slide {w}x{h} mpp={spec.mpp} seed={spec.seed}"
    return (
        f"Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] ({t}x{t}) JPEG/RGB Q={spec.jpeg_quality}"
        f"|AppMag = {round(10.0 / spec.mpp)}|MPP = {spec.mpp:.4f}|Filename = {name}"
        f"|Generator = sammil-deploy synthetic|Seed = {spec.seed}"  # no label: it must not leak into the file
    )
