"""Patch → mask assignment against hand-made masks and a brute-force reference."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from sammil_deploy.features.bag import FeatureBag, SpatialContext, group_features_from_memberships
from sammil_deploy.segment import SamImage, Segmentation, assign_patches
from sammil_deploy.segment.io import load_segmentation, save_segmentation


def make_sam_image(h: int, w: int, *, origin=(100, 200), level_downsample=1.0, residual=4) -> SamImage:
    x0, y0 = origin
    ds = level_downsample * residual
    return SamImage(
        image=np.full((h, w, 3), 200, np.uint8),
        origin_level0_xy=origin,
        downsample=ds,
        level=0,
        level_downsample=level_downsample,
        residual_downsample=residual,
        bbox_level0=(x0, y0, x0 + int(w * ds), y0 + int(h * ds)),
    )


def box_mask(hw, x0, y0, x1, y1):
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_overlaps_smallest_wins_and_background():
    hw = (32, 32)
    sam_image = make_sam_image(*hw)  # 4 level-0 px per SAM px, origin (100, 200)
    big = box_mask(hw, 0, 0, 16, 16)  # 256 px
    small = box_mask(hw, 4, 4, 8, 8)  # 16 px, inside big
    corner = np.zeros(hw, bool)
    corner[20, 27] = True  # a single pixel
    seg = Segmentation.from_masks([big, small, corner, np.zeros(hw, bool)], hw, "test")
    assert seg.n_masks == 3  # the empty mask is dropped
    np.testing.assert_array_equal(seg.areas_px, [256, 16, 1])
    # Patch side 16 level-0 px = 4 SAM px. Footprints on the SAM image (x, y):
    coords = np.array(
        [
            [100 + 4 * 4, 200 + 4 * 4],  # [4,8)x[4,8): in big and small -> category small
            [100 + 0, 200 + 40],  # [0,4)x[10,14): only big
            [100 + 24 * 4, 200 + 17 * 4],  # [24,28)x[17,21): touches the single pixel (27, 20): never joins it
            [100 + 20 * 4, 200 + 26 * 4],  # [20,24)x[26,30): nothing
            [100 + 2 * 4, 200 + 2 * 4],  # [2,6)x[2,6): big and small (partly)
        ]
    )
    a = assign_patches(seg, sam_image, coords, 16)
    # A 1-px mask is never joined: its area 1 would read as "no mask" in the official layout's relative_area.
    np.testing.assert_array_equal(a.segment_id, [1, 0, -1, -1, 1])
    np.testing.assert_array_equal(a.segment_area_px, [16, 256, 0, 0, 16])
    pairs = set(zip(a.membership_patch.tolist(), a.membership_mask.tolist(), strict=True))
    assert pairs == {(0, 0), (0, 1), (1, 0), (4, 0), (4, 1)}
    np.testing.assert_array_equal(a.group_ids, [0, 1])
    np.testing.assert_array_equal(a.group_area_px, [256, 16])
    # The official test only looks at the rounded top-left corner (4 px window): it misses the single pixel of
    # mask 2 (its SAM XYWH box [27, 27) x [20, 20) is empty when half-open), and patch 4, whose corner (2, 2)
    # lies outside mask 1's box, loses mask 1 and falls back to the big mask.
    o = assign_patches(seg, sam_image, coords, 16, mode="official")
    np.testing.assert_array_equal(o.segment_id, [1, 0, -1, -1, 0])
    assert (2, 2) not in set(zip(o.membership_patch.tolist(), o.membership_mask.tolist(), strict=True))


def test_equal_areas_tie_goes_to_lower_id_in_label_map_and_category():
    hw = (8, 8)
    a_mask, b_mask = box_mask(hw, 0, 0, 4, 4), box_mask(hw, 2, 2, 6, 6)
    seg = Segmentation.from_masks([a_mask, b_mask], hw, "test")
    assert seg.label_map[3, 3] == 0
    assert seg.label_map[5, 5] == 1
    assert seg.label_map[7, 7] == -1
    a = assign_patches(seg, make_sam_image(*hw, residual=1), np.array([[102, 202]]), 2)  # pixels [2,4)^2
    assert a.segment_id.tolist() == [0]


def test_label_map_smaller_mask_wins():
    hw = (10, 10)
    outer, inner = box_mask(hw, 0, 0, 10, 10), box_mask(hw, 3, 3, 5, 5)
    for order in ([outer, inner], [inner, outer]):
        seg = Segmentation.from_masks(order, hw, "test")
        inner_id = int(np.argmin(seg.areas_px))
        assert (seg.label_map[3:5, 3:5] == inner_id).all()
        assert (seg.label_map[0] == 1 - inner_id).all()


def brute_force_footprint(masks, sam_image, coords, patch_px):
    h, w = sam_image.size_hw
    out = set()
    for i, (x, y) in enumerate(coords):
        fx0 = (x - sam_image.origin_level0_xy[0]) / sam_image.downsample
        fy0 = (y - sam_image.origin_level0_xy[1]) / sam_image.downsample
        fx1, fy1 = fx0 + patch_px / sam_image.downsample, fy0 + patch_px / sam_image.downsample
        for k, m in enumerate(masks):
            # Pixel (px, py) spans [px, px+1); it is touched if it overlaps the footprint (or holds its corner).
            xs = [px for px in range(w) if px < fx1 and px + 1 > fx0 or px == int(np.floor(fx0))]
            ys = [py for py in range(h) if py < fy1 and py + 1 > fy0 or py == int(np.floor(fy0))]
            if xs and ys and m[np.ix_(ys, xs)].any():
                out.add((i, k))
    return out


def brute_force_official(masks, sam_image, coords, patch_px):
    f = sam_image.official_downsample
    side = patch_px // f
    out = set()
    for k, m in enumerate(masks):
        rows, cols = np.nonzero(m)
        bx, by, bw, bh = cols.min(), rows.min(), cols.max() - cols.min(), rows.max() - rows.min()  # SAM XYWH
        for i, c in enumerate(coords):
            cx, cy = ((c - np.array(sam_image.origin_level0_xy)) / f).round().astype(int)
            if not (bx <= cx < bx + bw and by <= cy < by + bh):
                continue
            if np.any(m[cy : cy + side, cx : cx + side]):
                out.add((i, k))
    return out


@pytest.mark.parametrize(("residual", "patch_px"), [(4, 16), (3, 10), (8, 4)])
def test_random_masks_match_brute_force(residual, patch_px):
    rng = np.random.default_rng(residual)
    hw = (24, 30)
    masks = []
    for _ in range(6):
        m = np.zeros(hw, bool)
        cy, cx, r = rng.integers(0, hw[0]), rng.integers(0, hw[1]), rng.integers(2, 9)
        yy, xx = np.mgrid[: hw[0], : hw[1]]
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = True
        m &= rng.random(hw) > 0.3  # ragged masks with holes
        masks.append(m)
    sam_image = make_sam_image(*hw, origin=(50, 70), residual=residual)
    coords = rng.integers([30, 50], [50 + 30 * residual, 70 + 24 * residual + 10], size=(120, 2))
    seg = Segmentation.from_masks(masks, hw, "test")
    assert seg.n_masks == 6
    a = assign_patches(seg, sam_image, coords, patch_px)
    got = set(zip(a.membership_patch.tolist(), a.membership_mask.tolist(), strict=True))
    in_image = [(i, k) for i, k in brute_force_footprint(masks, sam_image, coords, patch_px)]
    assert got == set(in_image)
    assert len(got) > 10
    o = assign_patches(seg, sam_image, coords, patch_px, mode="official")
    got_official = set(zip(o.membership_patch.tolist(), o.membership_mask.tolist(), strict=True))
    assert got_official == brute_force_official(masks, sam_image, coords, patch_px)
    assert got_official <= got  # the corner window lies inside the footprint
    # Category = smallest containing mask, per patch.
    for i in range(len(coords)):
        ks = [k for p, k in got if p == i]
        if not ks:
            assert a.segment_id[i] == -1
            assert a.segment_area_px[i] == 0
        else:
            best = min(ks, key=lambda k: (seg.areas_px[k], k))
            assert a.segment_id[i] == best
            assert a.segment_area_px[i] == seg.areas_px[best]


def test_official_mode_with_zero_window_finds_nothing(caplog):
    hw = (16, 16)
    seg = Segmentation.from_masks([np.ones(hw, bool)], hw, "test")
    sam_image = make_sam_image(*hw, residual=8)
    coords = np.array([[100 + 8 * 5, 200 + 8 * 5]])
    assert assign_patches(seg, sam_image, coords, 4, mode="footprint").segment_id.tolist() == [0]
    assert assign_patches(seg, sam_image, coords, 4, mode="official").segment_id.tolist() == [-1]
    assert "= 0" in caplog.text


def test_assignment_maps_onto_spatial_context(tmp_path):
    hw = (32, 32)
    seg = Segmentation.from_masks(
        [box_mask(hw, 0, 0, 20, 32), box_mask(hw, 16, 0, 32, 32)], hw, "test", tissue_area_px=1024
    )
    sam_image = make_sam_image(*hw)
    xs, ys = np.meshgrid(np.arange(100, 228, 16), np.arange(200, 328, 16))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    a = assign_patches(seg, sam_image, coords, 16)
    features = np.random.default_rng(0).normal(size=(len(coords), 8)).astype(np.float32)
    group_features = group_features_from_memberships(features, a.membership_patch, a.membership_mask, a.group_ids)
    ctx = SpatialContext(
        segment_id=a.segment_id,
        segment_area_px=a.segment_area_px,
        membership_patch=a.membership_patch,
        membership_mask=a.membership_mask,
        group_ids=a.group_ids,
        group_area_px=a.group_area_px,
        group_features=group_features,
        tissue_area_px=a.tissue_area_px,
        segmenter=a.segmenter,
    )
    bag = FeatureBag("s", coords, features, 16, context=ctx)
    # Patches on SAM columns [16, 20) are in both masks: counted in both group means.
    both = np.flatnonzero((coords[:, 0] - 100) // 4 == 16)
    assert len(both) == 8
    members0 = np.flatnonzero((coords[:, 0] - 100) // 4 < 20)
    np.testing.assert_allclose(group_features[0], features[members0].mean(axis=0), rtol=1e-5)
    assert bag.relative_area(with_groups=True)[-2:].tolist() == [0, 0]
    assert (a.segment_id[both] == 1).all()  # mask 1 (16 x 32 = 512 px) is smaller than mask 0 (640 px)
    np.testing.assert_allclose(a.segment_area_fraction[both], 512 / 1024)

    # The saved segmentation reloads to the same assignment.
    path = save_segmentation(tmp_path / "seg.npz", sam_image, seg)
    sam_image2, seg2 = load_segmentation(path)
    b = assign_patches(seg2, sam_image2, coords, 16)
    np.testing.assert_array_equal(a.membership_patch, b.membership_patch)
    np.testing.assert_array_equal(a.segment_id, b.segment_id)
    assert seg2.segmenter == "test"
    assert seg2.tissue_area_px == 1024
    assert not list(tmp_path.glob("*.partial"))


def test_no_patch_area_reads_as_no_mask_in_the_official_layout(tmp_path):
    from sammil_deploy.features.store import write_official
    from sammil_deploy.pipeline.stages import spatial_context

    hw = (32, 32)
    sam_image = make_sam_image(*hw)
    dots = [np.zeros(hw, bool) for _ in range(2)]
    dots[0][5, 5] = True  # 1 px: relative_area 1 would mean "no mask"
    dots[1][20, 20:22] = True  # 2 px: joinable
    seg = Segmentation.from_masks(dots, hw, "test")
    coords = np.array([[100 + 4 * 4, 200 + 4 * 4], [100 + 19 * 4, 200 + 18 * 4], [100, 200 + 100]])
    features = np.arange(len(coords) * 4, dtype=np.float32).reshape(len(coords), 4)
    for mode in ("footprint", "official"):
        a = assign_patches(seg, sam_image, coords, 16, mode=mode)
        bag = FeatureBag("s", coords, features, 16, 0, context=spatial_context(features, a))
        with h5py.File(write_official(tmp_path / f"{mode}.h5", bag)) as f:
            area = f["relative_area"][: len(coords)]
        # Every patch marked 1 ("no mask") really is in no mask, and no joined mask has area 1.
        np.testing.assert_array_equal(area == 1, a.segment_id == -1)
        assert 0 not in set(a.membership_mask.tolist())
    footprint = assign_patches(seg, sam_image, coords, 16)
    np.testing.assert_array_equal(footprint.segment_id, [-1, 1, -1])
