"""Shared pytest fixtures: the real CMU-1 slide and synthetic pyramidal slides (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def real_slide_path() -> Path:
    """CMU-1-Small-Region.svs (single level, 2220x2967 px, 0.499 mpp) from ``../shared/data``."""
    if not REAL_SLIDE.is_file():
        pytest.skip(f"real test slide not found at {REAL_SLIDE}")
    return REAL_SLIDE


# --- tissue/patching fixtures: an annulus of "tissue" with exactly known geometry -------------------------------


def write_annulus_tiff(
    path: Path,
    size_wh: tuple[int, int],
    *,
    centre_xy: tuple[float, float],
    radius_px: float,
    hole_radius_px: float = 0.0,
    mpp: float | None = 0.5,
    downsamples: tuple[int, ...] = (1, 4, 16),
) -> Path:
    """Tiled pyramidal TIFF: white (245) background, a purple disk of ``radius_px`` with a white hole, level-0 px.

    Tiles are generated one at a time, so large slides cost little memory.
    """
    import numpy as np
    import tifffile

    tile = 256
    colour, background = np.array([200, 100, 180], np.uint8), np.array([245, 245, 245], np.uint8)

    plain = {False: np.broadcast_to(background, (tile, tile, 3)), True: np.broadcast_to(colour, (tile, tile, 3))}

    def tiles(ds: int, w: int, h: int):
        offsets = np.arange(tile, dtype=np.float64) + 0.5
        for y0 in range(0, h, tile):
            dy2 = ((y0 + offsets) * ds - centre_xy[1]) ** 2
            for x0 in range(0, w, tile):
                d2 = dy2[:, None] + (((x0 + offsets) * ds - centre_xy[0]) ** 2)[None, :]
                tissue = (d2 <= radius_px**2) & (d2 > hole_radius_px**2)
                if tissue.all() or not tissue.any():  # most tiles are uniform: skip the per-pixel select
                    yield plain[bool(tissue[0, 0])]
                else:
                    yield np.where(tissue[..., None], colour, background)

    with tifffile.TiffWriter(path) as tw:
        for i, ds in enumerate(downsamples):
            w, h = -(-size_wh[0] // ds), -(-size_wh[1] // ds)
            extra = {} if mpp is None else {"resolution": (1e4 / (mpp * ds),) * 2, "resolutionunit": "CENTIMETER"}
            tw.write(
                tiles(ds, w, h), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                compression="jpeg", subfiletype=0 if i == 0 else 1, **extra,
            )
    return path


@pytest.fixture(scope="session")
def annulus_slide(tmp_path_factory) -> tuple[Path, dict]:
    """8192x8192 px, 0.5 mpp, levels 1/4/16; tissue annulus centre (4096, 4096), radii 3500 and 1300 level-0 px.

    Net tissue area is ~127 reference patches (512² px), above CLAM's default a_t=100, and the hole (~20) above
    a_h=16, so CLAM's default parameters keep one contour with one hole.
    """
    truth = {"size_wh": (8192, 8192), "centre_xy": (4096.0, 4096.0), "radius_px": 3500.0, "hole_radius_px": 1300.0,
             "mpp": 0.5}
    path = tmp_path_factory.mktemp("annulus") / "annulus.tif"
    write_annulus_tiff(path, truth["size_wh"], centre_xy=truth["centre_xy"], radius_px=truth["radius_px"],
                       hole_radius_px=truth["hole_radius_px"], mpp=truth["mpp"])
    return path, truth


# --- hardware markers: GPU/TensorRT tests are real but skip where the hardware is absent ---------------------------


def pytest_collection_modifyitems(config, items):
    import importlib.util

    import torch

    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "trt" in item.keywords and not (has_cuda and has_trt):
            item.add_marker(pytest.mark.skip(reason="needs TensorRT on a CUDA GPU"))
