"""Tile-aligned reader for JPEG-tiled TIFF/SVS: each tile decoded once, patches cut from decoded tiles.

OpenSlide's per-patch cost is mostly its pixel path (decode into ARGB, composite, convert to RGBA, PIL), paid
again for every patch that touches a tile. Here the level's JPEG tiles are read with ``os.pread`` and decoded
by libjpeg-turbo (``imagecodecs``) straight to RGB, kept in a small byte-bounded LRU cache, and patches are
copied out of them. The decode follows OpenSlide's: the JPEG colour space comes from the TIFF photometric tag
(Aperio's "JPEG/RGB" tiles are RGB, not YCbCr), shared ``JPEGTables`` are prepended, pixels right/below the
level and missing tiles are white (OpenSlide returns them transparent; every reader here composites on white).

Geometry, metadata and every read the fast path does not cover (other vendors and compressions, levels whose
origin is not an exact pixel of the level) go to an :class:`OpenSlideReader` on the same file, so ``info`` is
identical by construction and OpenSlide stays the universal reader.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sammil_deploy.errors import SlideError
from sammil_deploy.slide.base import SlideInfo, SlideReader
from sammil_deploy.slide.openslide_reader import OpenSlideReader

log = logging.getLogger(__name__)

READER_NAME = "tiled-jpeg"
# OpenSlide vendors whose levels are plain TIFF pages with a simple tile grid (no overlaps, no stitching).
TILED_VENDORS = ("aperio", "generic-tiff")
DEFAULT_CACHE_BYTES = 96 << 20  # ~120 decoded 512-px tiles, ~550 of 240 px: the tile rows of a read strip
_JPEG = 7
_PHOTOMETRIC_COLORSPACE = {2: "RGB", 6: "YCbCr"}  # TIFF photometric → JPEG colour space (as OpenSlide decodes)


@dataclass(frozen=True, slots=True)
class TiledLevel:
    """One pyramid level stored as JPEG tiles in a TIFF page.

    Attributes:
        width_px, height_px: Level size.
        tile_w_px, tile_h_px: Tile size (tiles at the right/bottom edge are stored full size).
        offsets, byte_counts: Per-tile file offset and length, row-major (0 bytes: missing tile).
        jpeg_tables: Shared quantisation/Huffman tables (``JPEGTables`` tag), or None.
        colorspace: JPEG colour space of the stored data (``"RGB"`` or ``"YCbCr"``).
    """

    width_px: int
    height_px: int
    tile_w_px: int
    tile_h_px: int
    offsets: np.ndarray
    byte_counts: np.ndarray
    jpeg_tables: bytes | None
    colorspace: str

    @property
    def tiles_x(self) -> int:
        """Tiles per row."""
        return -(-self.width_px // self.tile_w_px)


def tiled_level(page: Any) -> TiledLevel | None:
    """The :class:`TiledLevel` of a tifffile page, or None when the fast path cannot decode it exactly."""
    ok = (
        page.is_tiled
        and page.compression == _JPEG
        and page.bitspersample == 8
        and page.samplesperpixel == 3
        and page.planarconfig == 1
        and int(page.photometric) in _PHOTOMETRIC_COLORSPACE
        and getattr(page, "tiledepth", 1) == 1
    )
    if not ok:
        return None
    return TiledLevel(
        width_px=int(page.imagewidth),
        height_px=int(page.imagelength),
        tile_w_px=int(page.tilewidth),
        tile_h_px=int(page.tilelength),
        offsets=np.asarray(page.dataoffsets, np.int64),
        byte_counts=np.asarray(page.databytecounts, np.int64),
        jpeg_tables=page.jpegtables or None,
        colorspace=_PHOTOMETRIC_COLORSPACE[int(page.photometric)],
    )


class TiledJpegReader(SlideReader):
    """Fast reads of JPEG-tiled Aperio/generic TIFF levels; OpenSlide for metadata and everything else.

    Open it with :func:`sammil_deploy.slide.open_slide` (``reader="auto"`` picks it where it applies). One
    instance per process (it keeps a file descriptor and a tile cache).

    Args:
        path: Slide file.
        mpp_override: Microns per level-0 pixel instead of the metadata.
        cache_bytes: Bound on the decoded-tile cache.

    Raises:
        SlideError, UnsupportedSlideError: As :class:`OpenSlideReader`.
    """

    name = READER_NAME

    def __init__(self, path: Path, *, mpp_override: float | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self._openslide = OpenSlideReader(path, mpp_override=mpp_override)
        self._path = Path(path)
        self._levels = fast_levels(self._path, self._openslide.info)
        self._fd: int | None = os.open(self._path, os.O_RDONLY) if self._levels else None
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, max(0, int(cache_bytes))
        self.tiles_decoded = 0  # for benchmarks and tests: how often a tile was decoded

    @property
    def info(self) -> SlideInfo:
        """Geometry and metadata (OpenSlide's)."""
        return self._openslide.info

    @property
    def fast_level_indices(self) -> tuple[int, ...]:
        """Levels read through the tile path (the others go to OpenSlide)."""
        return tuple(sorted(self._levels))

    def read_region(self, xy_level0: tuple[int, int], level: int, size_px: tuple[int, int]) -> np.ndarray:
        """Return an (H, W, 3) uint8 RGB array, pixel-identical to :class:`OpenSlideReader`."""
        tiled = self._levels.get(level)
        if tiled is None or self._fd is None:
            return self._openslide.read_region(xy_level0, level, size_px)
        ds = self.info.level_downsamples[level]
        x0, y0 = int(xy_level0[0]), int(xy_level0[1])
        if level and (x0 % round(ds) or y0 % round(ds)):  # not an exact pixel of the level: OpenSlide resamples
            return self._openslide.read_region(xy_level0, level, size_px)
        return self._read_tiles(level, tiled, (x0 // round(ds), y0 // round(ds)), size_px)

    def _read_tiles(self, level: int, tiled: TiledLevel, xy: tuple[int, int], size_px: tuple[int, int]) -> np.ndarray:
        """Copy the window ``xy`` + ``size_px`` (level px) out of the tiles it touches; outside the level is white."""
        w, h = int(size_px[0]), int(size_px[1])
        x0, y0 = max(xy[0], 0), max(xy[1], 0)
        x1, y1 = min(xy[0] + w, tiled.width_px), min(xy[1] + h, tiled.height_px)
        inside = (x0, y0, x1, y1) == (xy[0], xy[1], xy[0] + w, xy[1] + h)
        # White only where no tile will write (outside the level or a missing tile): skips a fill per patch.
        out = np.empty((h, w, 3), np.uint8) if inside and self._all_present(tiled, x0, y0, x1, y1) else None
        out = np.full((h, w, 3), 255, np.uint8) if out is None else out
        tw, th = tiled.tile_w_px, tiled.tile_h_px
        for ty in range(y0 // th, (y1 - 1) // th + 1) if y1 > y0 else ():
            for tx in range(x0 // tw, (x1 - 1) // tw + 1) if x1 > x0 else ():
                tile = self._tile(level, tiled, ty * tiled.tiles_x + tx)
                if tile is None:
                    continue
                # Intersection of the window and the tile (clipped to the level), in level px.
                ax, ay = max(x0, tx * tw), max(y0, ty * th)
                bx, by = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
                out[ay - xy[1] : by - xy[1], ax - xy[0] : bx - xy[0]] = tile[ay - ty * th : by - ty * th,
                                                                             ax - tx * tw : bx - tx * tw]  # fmt: skip
        return out

    @staticmethod
    def _all_present(tiled: TiledLevel, x0: int, y0: int, x1: int, y1: int) -> bool:
        """Whether every tile under the window ``[x0, x1) x [y0, y1)`` (level px, inside the level) has data."""
        tw, th = tiled.tile_w_px, tiled.tile_h_px
        rows = np.arange(y0 // th, (y1 - 1) // th + 1)[:, None] * tiled.tiles_x
        return bool((tiled.byte_counts[rows + np.arange(x0 // tw, (x1 - 1) // tw + 1)] > 0).all())

    def _tile(self, level: int, tiled: TiledLevel, index: int) -> np.ndarray | None:
        """Decoded RGB tile ``index`` of ``level`` (cached), or None for a missing tile."""
        key = (level, index)
        tile = self._cache.get(key)
        if tile is not None:
            self._cache.move_to_end(key)
            return tile
        nbytes = int(tiled.byte_counts[index])
        if nbytes == 0:
            return None
        tile = decode_tile(os.pread(self._fd, nbytes, int(tiled.offsets[index])), tiled)
        self.tiles_decoded += 1
        self._cache[key] = tile
        self._cache_bytes += tile.nbytes
        while self._cache_bytes > self._cache_limit and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return tile

    def close(self) -> None:
        """Release the file descriptor, the cache and the OpenSlide handle (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._cache.clear()
        self._cache_bytes = 0
        self._openslide.close()


def decode_tile(data: bytes, tiled: TiledLevel) -> np.ndarray:
    """One JPEG tile → (tile_h, tile_w, 3) uint8 RGB, decoded as OpenSlide does (libjpeg-turbo, ISLOW IDCT).

    Raises:
        SlideError: If the tile is corrupt.
    """
    import imagecodecs

    try:
        rgb = imagecodecs.jpeg8_decode(data, tables=tiled.jpeg_tables, colorspace=tiled.colorspace, outcolorspace="RGB")
    except imagecodecs.Jpeg8Error as err:
        raise SlideError(f"corrupt JPEG tile ({err}); the slide file is damaged") from None
    if rgb.shape != (tiled.tile_h_px, tiled.tile_w_px, 3):
        raise SlideError(f"JPEG tile is {rgb.shape}, the TIFF says {(tiled.tile_h_px, tiled.tile_w_px, 3)}")
    return rgb


def fast_levels(path: Path, info: SlideInfo) -> dict[int, TiledLevel]:
    """OpenSlide level → :class:`TiledLevel` for the levels the tile path reproduces exactly (may be empty).

    A level qualifies when OpenSlide's vendor is a plain tiled TIFF one, a tiled JPEG page has exactly the
    level's size, and its downsample is an integer (so level-0 patch corners map to whole level pixels).
    """
    if info.vendor not in TILED_VENDORS:
        return {}
    import imagecodecs
    import tifffile

    if not getattr(imagecodecs, "JPEG8", None) or not imagecodecs.JPEG8.available:  # a build without libjpeg
        return {}

    try:
        with tifffile.TiffFile(path) as tif:
            pages = [p for p in tif.pages if getattr(p, "is_tiled", False)]
            by_size = {(int(p.imagewidth), int(p.imagelength)): p for p in reversed(pages)}  # first page wins
            levels: dict[int, TiledLevel] = {}
            for level, (size, ds) in enumerate(zip(info.level_dimensions_wh, info.level_downsamples, strict=True)):
                page = by_size.get(size)
                if page is not None and abs(ds - round(ds)) < 1e-9 and (tiled := tiled_level(page)) is not None:
                    levels[level] = tiled
    except (tifffile.TiffFileError, OSError, ValueError) as err:
        log.debug("%s: tile reader not used (%s)", path.name, err)
        return {}
    return levels
