"""Patch grid (against a direct port of CLAM's per-point loop) and the coords HDF5 file."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from sammil_deploy.errors import ConfigError, FeatureStoreError, PatchingError
from sammil_deploy.patching import (
    COORDS_SCHEMA_VERSION,
    PatchConfig,
    make_patch_grid,
    read_coords_h5,
    write_coords_h5,
)
from sammil_deploy.slide import SlideInfo, open_slide
from sammil_deploy.tissue import TissueConfig, TissueResult, detect_tissue, tissue_preset


def _clam_reference(tissue: TissueResult, size0: int, step0: int, contour_fn: str, use_padding: bool, slide_wh):
    """CLAM ``process_contour`` + ``isInContour*`` + ``isInHoles``, one cv2.pointPolygonTest call per point."""
    out = []
    for contour, holes in zip(tissue.contours_level0_xy, tissue.holes_level0_xy, strict=True):
        cont = contour.reshape(-1, 1, 2).astype(np.int32)
        start_x, start_y, w, h = cv2.boundingRect(cont)
        stop_x, stop_y = start_x + w, start_y + h
        if not use_padding:
            stop_x, stop_y = min(stop_x, slide_wh[0] - size0 + 1), min(stop_y, slide_wh[1] - size0 + 1)

        def inside(pt, cont=cont):
            return cv2.pointPolygonTest(cont, (float(pt[0]), float(pt[1])), False) >= 0

        for x in range(start_x, stop_x, step0):
            for y in range(start_y, stop_y, step0):
                centre = (x + size0 // 2, y + size0 // 2)
                shift = int(size0 // 2 * 0.5)
                four = [
                    (centre[0] + sx * shift, centre[1] + sy * shift) for sx, sy in ((-1, -1), (1, 1), (1, -1), (-1, 1))
                ]
                ok = {
                    "four_pt": any(inside(p) for p in four),
                    "four_pt_hard": all(inside(p) for p in four),
                    "center": inside(centre),
                    "basic": inside((x, y)),
                }[contour_fn]
                in_hole = any(
                    cv2.pointPolygonTest(hole.reshape(-1, 1, 2), (x + size0 / 2, y + size0 / 2), False) > 0
                    for hole in holes
                )
                if ok and not in_hole:
                    out.append((x, y))
    return np.array(out, np.int64).reshape(-1, 2)


def _info(size_wh=(8192, 8192), mpp=0.5, downsamples=(1.0, 4.0)) -> SlideInfo:
    return SlideInfo(
        path=Path("fake.svs"),
        level_dimensions_wh=tuple((int(size_wh[0] / d), int(size_wh[1] / d)) for d in downsamples),
        level_downsamples=downsamples,
        mpp=mpp,
        objective_power=None,
        vendor="test",
        mpp_source="metadata" if mpp else "missing",
    )


def _tissue(contours, holes=None) -> TissueResult:
    contours = tuple(np.asarray(c, np.int32) for c in contours)
    holes = holes or tuple(() for _ in contours)
    points = np.concatenate(contours)
    return TissueResult(
        contours_level0_xy=contours,
        holes_level0_xy=tuple(tuple(np.asarray(h, np.int32) for h in hs) for hs in holes),
        seg_level=0,
        seg_downsample_xy=(1.0, 1.0),
        mask=np.ones((1, 1), bool),
        tissue_area_level0_px2=0.0,
        bbox_level0=(*points.min(0).tolist(), *points.max(0).tolist()),
    )


@pytest.fixture(scope="module")
def annulus_tissue(annulus_slide):
    path, _ = annulus_slide
    with open_slide(path) as reader:
        return reader.info, detect_tissue(reader, TissueConfig())


@pytest.mark.parametrize("contour_fn", ["four_pt", "four_pt_hard", "center", "basic"])
def test_grid_matches_clam_loop_on_annulus(annulus_tissue, contour_fn):
    info, tissue = annulus_tissue
    grid = make_patch_grid(info, tissue, PatchConfig(patch_size_px=384, step_px=300, contour_fn=contour_fn))
    expected = _clam_reference(tissue, 384, 300, contour_fn, True, info.dimensions_wh)
    np.testing.assert_array_equal(grid.coords_level0_xy, expected)
    assert grid.coords_level0_xy.dtype == np.int64
    assert grid.patch_size_level0_px == 384
    assert grid.step_level0_px == 300
    assert grid.patch_level == 0


def test_sammil_grid_on_annulus_avoids_hole_and_covers_ring(annulus_slide, annulus_tissue):
    _, truth = annulus_slide
    info, tissue = annulus_tissue
    grid = make_patch_grid(info, tissue, PatchConfig())  # SAM-MIL: 512 px, step 512, level 0, four_pt
    np.testing.assert_array_equal(
        grid.coords_level0_xy, _clam_reference(tissue, 512, 512, "four_pt", True, (8192,) * 2)
    )
    centres = grid.coords_level0_xy + 256
    dist = np.hypot(*(centres - truth["centre_xy"]).T)
    assert (dist > truth["hole_radius_px"] - 40).all()  # no centre inside the hole
    # Every patch touches the ring: its nearest point to the centre is within the outer radius.
    corners = grid.coords_level0_xy
    nearest = np.clip(np.array(truth["centre_xy"]), corners, corners + 512)
    assert (np.hypot(*(nearest - truth["centre_xy"]).T) < truth["radius_px"]).all()
    # Patches lying well inside the ring are all there: none missing from the aligned grid.
    xs = np.arange(tissue.bbox_level0[0], tissue.bbox_level0[2] + 1, 512)
    ys = np.arange(tissue.bbox_level0[1], tissue.bbox_level0[3] + 1, 512)
    gx, gy = np.meshgrid(xs, ys)
    grid_xy = np.stack([gx.ravel(), gy.ravel()], 1)
    far = np.hypot(*(grid_xy + 256 - truth["centre_xy"]).T)
    deep = grid_xy[(far < truth["radius_px"] - 400) & (far > truth["hole_radius_px"] + 400)]
    assert {tuple(p) for p in deep} <= {tuple(p) for p in corners}


def test_grid_matches_clam_on_real_slide_without_padding(real_slide_path):
    with open_slide(real_slide_path) as reader:
        info = reader.info
        tissue = detect_tissue(reader, TissueConfig(**tissue_preset("bwh_biopsy")))
    grid = make_patch_grid(info, tissue, PatchConfig(patch_size_px=256, use_padding=False))
    np.testing.assert_array_equal(
        grid.coords_level0_xy, _clam_reference(tissue, 256, 256, "four_pt", False, (2220, 2967))
    )
    assert (grid.coords_level0_xy + 256 <= np.array([2220, 2967])).all()


def test_patch_level_and_target_mpp_geometry(annulus_tissue):
    _, tissue = annulus_tissue
    info = _info()
    by_level = make_patch_grid(info, tissue, PatchConfig(patch_size_px=128, patch_level=1))
    assert (by_level.read_size_px, by_level.patch_size_level0_px, by_level.step_level0_px) == (128, 512, 512)
    assert by_level.patch_level == 1
    assert by_level.patch_downsample == 4.0
    # 224 px at 1.0 mpp on a 0.5-mpp slide: 448 level-0 px, read from level 0 (level 1 would be 2.0 mpp).
    by_mpp = make_patch_grid(info, tissue, PatchConfig(patch_size_px=224, target_mpp=1.0))
    assert (by_mpp.patch_size_level0_px, by_mpp.patch_level, by_mpp.read_size_px) == (448, 0, 448)
    assert by_mpp.output_size_px == 224
    assert by_mpp.target_mpp == 1.0
    # At 2.0 mpp the level-1 pixels are exactly the target.
    coarse = make_patch_grid(info, tissue, PatchConfig(patch_size_px=128, target_mpp=2.0))
    assert (coarse.patch_size_level0_px, coarse.patch_level, coarse.read_size_px) == (512, 1, 128)


def test_geometry_errors(annulus_tissue):
    _, tissue = annulus_tissue
    with pytest.raises(ConfigError, match="--mpp"):
        make_patch_grid(_info(mpp=None), tissue, PatchConfig(target_mpp=0.5))
    with pytest.raises(ConfigError, match="finer than"):
        make_patch_grid(_info(), tissue, PatchConfig(target_mpp=0.25))
    with pytest.raises(ConfigError, match="patch_level 3 does not exist"):
        make_patch_grid(_info(), tissue, PatchConfig(patch_level=3))
    with pytest.raises(ConfigError, match="give only one"):
        PatchConfig(patch_level=1, target_mpp=0.5)
    with pytest.raises(ConfigError, match="contour_fn"):
        PatchConfig(contour_fn="square")


def test_slide_smaller_than_patch_and_zero_patches():
    small = _tissue([[(10, 10), (300, 10), (300, 200), (10, 200)]])
    with pytest.raises(PatchingError, match=r"fake\.svs: the slide \(400x300 level-0 px\) is smaller than one patch"):
        make_patch_grid(_info(size_wh=(400, 300), downsamples=(1.0,)), small, PatchConfig())
    # A sliver 20 px wide: no 512-px patch has all four test points on it.
    sliver = _tissue([[(1000, 1000), (1020, 1000), (1020, 3000), (1000, 3000)]])
    with pytest.raises(PatchingError, match="no 512-px patch passes the 'four_pt_hard' check"):
        make_patch_grid(_info(), sliver, PatchConfig(contour_fn="four_pt_hard"))


def test_overlapping_contour_grids_do_not_duplicate_patches():
    square = [(1000, 1000), (3000, 1000), (3000, 3000), (1000, 3000)]
    tissue = _tissue([square, square])  # two contours with the same bounding box
    grid = make_patch_grid(_info(), tissue, PatchConfig())
    assert len(grid) == len(_clam_reference(_tissue([square]), 512, 512, "four_pt", True, (8192, 8192)))
    assert len(np.unique(grid.coords_level0_xy, axis=0)) == len(grid)


def test_coords_h5_is_clam_compatible_and_round_trips(tmp_path, annulus_tissue):
    info, tissue = annulus_tissue
    grid = make_patch_grid(info, tissue, PatchConfig())
    path = write_coords_h5(
        tmp_path / "s.h5", grid, info, {"tissue": TissueConfig(), "patch": PatchConfig()}, extra_attrs={"seg_level": 2}
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no .partial left
    with h5py.File(path, "r") as f:
        coords = f["coords"]
        assert coords.dtype == np.int64
        assert coords.shape == (len(grid), 2)
        assert coords.maxshape == (None, 2)
        assert coords.chunks == (32, 2)
        assert coords.attrs["patch_size"] == 512
        assert coords.attrs["patch_level"] == 0
        assert tuple(coords.attrs["level_dim"]) == (8192, 8192)
        assert coords.attrs["name"] == "annulus"
        assert f.attrs["schema_version"] == COORDS_SCHEMA_VERSION
        assert f.attrs["slide_width_px"] == 8192
        assert f.attrs["mpp"] == 0.5
        assert f.attrs["seg_level"] == 2
        np.testing.assert_array_equal(coords[()], grid.coords_level0_xy)
    loaded = read_coords_h5(path)
    np.testing.assert_array_equal(loaded.grid.coords_level0_xy, grid.coords_level0_xy)
    assert loaded.grid.patch_size_level0_px == 512
    assert loaded.grid.target_mpp is None
    assert loaded.attrs["tissue_config"]["a_t"] == 100
    assert loaded.attrs["patch_config"]["patch_size_px"] == 512
    assert loaded.schema_version == COORDS_SCHEMA_VERSION
    assert loaded.name == "annulus"


def test_read_coords_accepts_plain_clam_file(tmp_path):
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as f:  # what CLAM's save_hdf5 writes for patch_level 1 on a 4x level
        dset = f.create_dataset("coords", data=np.array([[0, 0], [1024, 0]]), maxshape=(None, 2), chunks=(1, 2))
        dset.attrs.update(patch_size=256, patch_level=1, downsample=(4.0, 4.0), name="clam")
    loaded = read_coords_h5(path)
    assert loaded.schema_version is None
    assert loaded.grid.patch_size_level0_px == 1024
    assert len(loaded.grid) == 2


def test_read_coords_rejects_bad_files(tmp_path):
    with pytest.raises(FeatureStoreError, match="no such coords file"):
        read_coords_h5(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(FeatureStoreError, match="not a readable HDF5"):
        read_coords_h5(tmp_path / "text.h5")
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("coords", data=np.zeros((4, 3), np.int64))
    with pytest.raises(FeatureStoreError, match=r"\(N, 2\) integer"):
        read_coords_h5(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "noattrs.h5", "w") as f:
        f.create_dataset("coords", data=np.zeros((4, 2), np.int64))
    with pytest.raises(FeatureStoreError, match="lacks attrs"):
        read_coords_h5(tmp_path / "noattrs.h5")
