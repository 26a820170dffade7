"""The tile-aligned JPEG reader: pixel-identical to OpenSlide, each tile decoded once, OpenSlide fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from sammil_deploy.errors import ConfigError
from sammil_deploy.slide import open_slide


def _random_windows(reader, rng, n=25, max_px=700):
    """Random windows at every level, some reaching past the slide's edges (white there)."""
    for level, ds in enumerate(reader.info.level_downsamples):
        w0, h0 = reader.info.dimensions_wh
        step = round(ds)
        for _ in range(n):
            x = int(rng.integers(-300, w0)) // step * step
            y = int(rng.integers(-300, h0)) // step * step
            yield (x, y), level, (int(rng.integers(1, max_px)), int(rng.integers(1, max_px)))


def _assert_same_pixels(path: Path, expect_fast_levels: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    with open_slide(path, reader="openslide") as ref, open_slide(path, reader="tiled") as fast:
        assert fast.name == "tiled-jpeg"
        assert fast.fast_level_indices == expect_fast_levels
        assert fast.info == ref.info
        for xy, level, size in _random_windows(ref, rng):
            np.testing.assert_array_equal(fast.read_region(xy, level, size), ref.read_region(xy, level, size))
        assert fast.tiles_decoded > 0


def test_real_aperio_slide_240px_rgb_jpeg_tiles(real_slide_path):
    """CMU-1: Aperio "JPEG/RGB" 240-px tiles with shared JPEGTables, partial edge tiles."""
    _assert_same_pixels(real_slide_path, (0,))


def test_synthetic_slide_ycbcr_420_every_level(synthetic_slide):
    """tifffile-written YCbCr 4:2:0 JPEG, 512-px tiles, four levels with integer downsamples."""
    with open_slide(synthetic_slide, reader="openslide") as ref:
        levels = tuple(range(ref.info.level_count))
    _assert_same_pixels(synthetic_slide, levels)


@pytest.mark.parametrize(("tile_px", "subsampling"), [(240, (2, 2)), (240, (1, 1)), (496, (2, 1))])
def test_odd_tile_sizes_and_subsamplings(tmp_path, tile_px, subsampling):
    rng = np.random.default_rng(tile_px)
    h, w = 1000, 1300  # not a multiple of the tile: partial edge tiles
    image = (rng.integers(0, 256, (h // 20 + 1, w // 20 + 1, 3), dtype=np.uint8)).repeat(20, 0).repeat(20, 1)[:h, :w]
    image = np.clip(image.astype(np.int16) + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    path = tmp_path / f"odd_{tile_px}.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(tile_px, tile_px), compression="jpeg", photometric="rgb", subsampling=subsampling,
                  resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")  # fmt: skip
    _assert_same_pixels(path, (0,))


def test_each_tile_is_decoded_once_in_read_order(synthetic_slide):
    """A row-major pass over a patch grid decodes every touched tile exactly once (the cache holds a row)."""
    from sammil_deploy.features.engine import tile_read_order

    with open_slide(synthetic_slide, reader="tiled") as fast:
        w, h = fast.info.dimensions_wh
        xs, ys = np.arange(100, w - 512, 512), np.arange(100, h - 512, 512)
        grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)  # CLAM's x-major order
        for x, y in grid[tile_read_order(grid)]:
            fast.read_region((int(x), int(y)), 0, (512, 512))
        tiles = {(int(tx), int(ty)) for x, y in grid for tx in (x // 512, (x + 511) // 512)
                 for ty in (y // 512, (y + 511) // 512)}  # fmt: skip
        assert fast.tiles_decoded == len(tiles)


def test_strip_order_decodes_each_tile_about_once_with_a_small_cache(synthetic_slide):
    """Rows wider than the tile cache: row-major re-decodes tile rows; strips (4 patches here) keep them cached."""
    from sammil_deploy.features.engine import tile_read_order
    from sammil_deploy.slide.tiled_reader import TiledJpegReader

    cache_bytes = 12 * 512 * 512 * 3  # 12 tiles: two tile rows of a 4-patch strip, far less than a slide row
    xs, ys = np.arange(100, 6144 - 512, 512), np.arange(100, 5120 - 512, 512)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    tiles = {(int(tx), int(ty)) for x, y in grid for tx in (x // 512, (x + 511) // 512)
             for ty in (y // 512, (y + 511) // 512)}  # fmt: skip
    decoded = {}
    for name, strip in (("row-major", 10**6), ("strips", 4)):
        with TiledJpegReader(synthetic_slide, cache_bytes=cache_bytes) as reader:
            for x, y in grid[tile_read_order(grid, strip_patches=strip)]:
                reader.read_region((int(x), int(y)), 0, (512, 512))
            decoded[name] = reader.tiles_decoded
    assert decoded["row-major"] > 1.5 * len(tiles)  # the cache cannot hold two tile rows of a slide row
    assert decoded["strips"] <= 1.4 * len(tiles)  # only the tile columns shared by neighbouring strips repeat


def test_other_compressions_fall_back_to_openslide(tmp_path):
    path = tmp_path / "deflate.tif"
    image = np.random.default_rng(0).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    tifffile.imwrite(path, image, tile=(256, 256), compression="zlib", photometric="rgb")
    with open_slide(path) as auto:
        assert auto.name == "openslide"  # auto: the tile path covers no level
    with open_slide(path, reader="tiled") as fast, open_slide(path, reader="openslide") as ref:
        assert fast.fast_level_indices == ()
        np.testing.assert_array_equal(
            fast.read_region((10, 20), 0, (300, 300)), ref.read_region((10, 20), 0, (300, 300))
        )


def test_unknown_reader_is_refused(real_slide_path):
    with pytest.raises(ConfigError, match="no reader 'pillow'"):
        open_slide(real_slide_path, reader="pillow")
