"""Feature store: round trips of our schema, the official SAM-MIL layout and CLAM files, and bad files."""

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_same_context

from sammil_deploy.errors import FeatureStoreError
from sammil_deploy.features.bag import FeatureBag, SpatialContext, group_features_from_memberships
from sammil_deploy.features.store import read_bag, read_clam_pt, read_official, write_bag, write_official


def make_bag(n=12, d=8, seed=0) -> FeatureBag:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d)).astype(np.float32)
    coords = np.stack([np.arange(n) * 512, np.zeros(n)], axis=1).astype(np.int64)
    # masks 3 (area 50) and 7 (area 900) overlap on patches 2..4; patches 10, 11 are in no mask
    membership = [(p, 3) for p in range(0, 5)] + [(p, 7) for p in range(2, 10)]
    mp = np.array([m[0] for m in membership])
    mm = np.array([m[1] for m in membership])
    segment_id = np.array([3, 3, 3, 3, 3, 7, 7, 7, 7, 7, -1, -1])
    segment_area = np.where(segment_id == 3, 50, np.where(segment_id == 7, 900, 0))
    group_ids = np.array([3, 7])
    ctx = SpatialContext(
        segment_id=segment_id,
        segment_area_px=segment_area,
        membership_patch=mp,
        membership_mask=mm,
        group_ids=group_ids,
        group_area_px=np.array([50, 900]),
        group_features=group_features_from_memberships(features, mp, mm, group_ids),
        tissue_area_px=4000,
        segmenter="fallback_test",
    )
    return FeatureBag("slide_a", coords, features, 512, 0, ctx, {"encoder": "resnet50_trunc", "cfg": {"k": 1}})


def test_group_features_are_member_means_with_overlaps():
    bag = make_bag()
    ctx = bag.context
    np.testing.assert_allclose(ctx.group_features[0], bag.features[0:5].mean(0), rtol=1e-6)
    np.testing.assert_allclose(ctx.group_features[1], bag.features[2:10].mean(0), rtol=1e-6)


def test_round_trip_keeps_every_field(tmp_path):
    bag = make_bag()
    path = write_bag(tmp_path / "slide_a.h5", bag)
    back = read_bag(path)
    np.testing.assert_array_equal(back.features, bag.features)
    np.testing.assert_array_equal(back.coords_level0_xy, bag.coords_level0_xy)
    assert_same_context(back.context, bag.context)
    assert back.attrs["encoder"] == "resnet50_trunc"
    assert back.attrs["cfg"] == {"k": 1}
    assert back.patch_size_level0_px == 512
    assert not list(tmp_path.glob("*.partial"))
    with h5py.File(path) as f:  # CLAM readers only need these two names
        assert f["coords"].attrs["patch_size"] == 512
        assert f["features"].shape == (12, 8)


def test_relative_area_matches_official_meaning():
    bag = make_bag()
    area = bag.relative_area(with_groups=True)
    assert area.tolist() == [50] * 5 + [900] * 5 + [1, 1] + [0, 0]
    assert bag.tokens(with_groups=True).shape == (14, 8)
    assert bag.is_group_token(with_groups=True).sum() == 2


def test_official_layout_round_trip(tmp_path):
    bag = make_bag()
    path = write_official(tmp_path / "official.h5", bag)
    with h5py.File(path) as f:
        assert f["features"].shape == (14, 8)
        assert f["coords"][-1].tolist() == [-1, -1]
        assert f["is_group_feat"][:].tolist() == [0] * 12 + [1, 1]
    back = read_official(path)
    np.testing.assert_array_equal(back.features, bag.features)
    np.testing.assert_array_equal(back.context.group_features, bag.context.group_features)
    np.testing.assert_array_equal(back.relative_area(with_groups=True), bag.relative_area(with_groups=True))
    # categories survive as ids ranked by area
    assert back.context.segment_id.tolist() == [0] * 5 + [1] * 5 + [-1, -1]
    assert read_bag(path).context.segmenter == "official_import"  # auto-detected by read_bag too


def test_official_split_files(tmp_path):
    bag = make_bag()
    write_official(tmp_path / "both.h5", bag)
    with h5py.File(tmp_path / "both.h5") as src:
        with h5py.File(tmp_path / "h5_files.h5", "w") as f:
            f["features"], f["coords"] = src["features"][:], src["coords"][:]
        with h5py.File(tmp_path / "sam_info.h5", "w") as f:
            f["coords"], f["is_group_feat"] = src["coords"][:], src["is_group_feat"][:]
            f["relative_area"] = src["relative_area"][:]
    back = read_official(tmp_path / "h5_files.h5", tmp_path / "sam_info.h5")
    assert back.n_patches == 12
    assert back.context.n_groups == 2


def test_plain_clam_h5_and_pt(tmp_path):
    bag = make_bag()
    with h5py.File(tmp_path / "clam.h5", "w") as f:
        f["features"] = bag.features
        f["coords"] = bag.coords_level0_xy
        f["coords"].attrs.update(patch_size=256, patch_level=1, downsample=(2.0, 2.0))
    plain = read_bag(tmp_path / "clam.h5")
    assert plain.context is None
    assert plain.patch_size_level0_px == 512  # 256 px at a 2x level
    with pytest.raises(FeatureStoreError, match="no SAM spatial context"):
        plain.require_context()
    torch.save(torch.from_numpy(bag.features), tmp_path / "slide.pt")
    from_pt = read_clam_pt(tmp_path / "slide.pt", tmp_path / "clam.h5")
    np.testing.assert_array_equal(from_pt.features, bag.features)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FeatureStoreError, match="no such feature file"):
        read_bag(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(FeatureStoreError, match="text.h5: not a readable HDF5"):
        read_bag(tmp_path / "text.h5")
    with h5py.File(tmp_path / "coords_only.h5", "w") as f:
        f["coords"] = np.zeros((3, 2), np.int64)
    with pytest.raises(FeatureStoreError, match="no 'features' dataset"):
        read_bag(tmp_path / "coords_only.h5")
    with h5py.File(tmp_path / "mismatch.h5", "w") as f:
        f["coords"] = np.zeros((3, 2), np.int64)
        f["features"] = np.zeros((4, 2), np.float32)
    with pytest.raises(FeatureStoreError, match="4 feature rows but 3 coords"):
        read_bag(tmp_path / "mismatch.h5")
    path = write_bag(tmp_path / "future.h5", make_bag())
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(FeatureStoreError, match="newer than this toolkit"):
        read_bag(path)


def test_failed_write_leaves_nothing(tmp_path):
    bag = make_bag()
    bad = FeatureBag("x", bag.coords_level0_xy, bag.features, 512, attrs={"bad": object()})
    with pytest.raises(TypeError):
        write_bag(tmp_path / "x.h5", bad)
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_context_rejected():
    bag = make_bag()
    ctx = bag.context
    with pytest.raises(FeatureStoreError, match="segment_id must be"):
        FeatureBag(
            "y",
            bag.coords_level0_xy,
            bag.features,
            512,
            context=SpatialContext(**{**ctx.__dict__, "segment_id": ctx.segment_id[:3]}),
        )
