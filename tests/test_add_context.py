"""add-context: SAM context for CLAM feature files (.h5 and .pt) without re-extraction; convert between layouts."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from sammil_deploy.features.store import read_bag, read_official

CLI = [sys.executable, "-m", "sammil_deploy"]


@pytest.fixture(scope="module")
def clam_files(tmp_path_factory, real_slide_path):
    """CLAM-style feature files for the real slide: a 4x5 grid of 512 px patches, random 16-d features."""
    root = tmp_path_factory.mktemp("clam")
    xs, ys = np.meshgrid(np.arange(400, 1900, 512), np.arange(100, 2700, 512))
    coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
    features = np.random.default_rng(0).normal(size=(len(coords), 16)).astype(np.float32)
    stem = real_slide_path.stem
    (root / "h5_files").mkdir()
    with h5py.File(root / "h5_files" / f"{stem}.h5", "w") as f:
        f["features"], f["coords"] = features, coords
        f["coords"].attrs.update(patch_size=512, patch_level=0)
    (root / "pt_files").mkdir()
    torch.save(torch.from_numpy(features), root / "pt_files" / f"{stem}.pt")
    return root, coords, features


def run(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_clam_h5_gets_consistent_context(clam_files, real_slide_path, tmp_path):
    root, coords, features = clam_files
    result = run(
        "add-context",
        root / "h5_files",
        "--slides",
        real_slide_path.parent,
        "--out",
        tmp_path / "out",
        "--segmenter",
        "fallback",
        "--preset",
        "bwh_biopsy",  # the real slide's small tissue: frames the SAM image as extract does
    )
    assert result.returncode == 0, result.stderr
    bag = read_bag(tmp_path / "out" / f"{real_slide_path.stem}.h5")
    ctx = bag.context
    np.testing.assert_array_equal(bag.features, features)  # features untouched
    assert ctx.segmenter == "fallback_kmeans"
    assert ctx.n_groups >= 2
    for row, group in enumerate(ctx.group_ids):
        members = ctx.membership_patch[ctx.membership_mask == group]
        np.testing.assert_allclose(ctx.group_features[row], features[members].mean(0), rtol=1e-5, atol=1e-6)
    in_mask = ctx.segment_id >= 0
    assert in_mask.any()
    pairs = set(zip(ctx.membership_patch.tolist(), ctx.membership_mask.tolist(), strict=True))
    assert all((p, m) in pairs for p, m in zip(np.nonzero(in_mask)[0], ctx.segment_id[in_mask], strict=True))
    assert bag.attrs["context_added_from"] == real_slide_path.name


def test_pt_input_and_official_layout(clam_files, real_slide_path, tmp_path):
    root, _, features = clam_files
    result = run(
        "add-context",
        root / "pt_files",
        "--slides",
        real_slide_path.parent,
        "--out",
        tmp_path / "off",
        "--coords-dir",
        root / "h5_files",
        "--layout",
        "official",
        "--segmenter",
        "fallback",
        "--preset",
        "bwh_biopsy",  # the real slide's small tissue: frames the SAM image as extract does
    )
    assert result.returncode == 0, result.stderr
    path = tmp_path / "off" / f"{real_slide_path.stem}.h5"
    with h5py.File(path) as f:
        n_groups = int(f["is_group_feat"][:].sum())
        assert f["features"].shape == (len(features) + n_groups, 16)
    back = read_official(path)
    np.testing.assert_array_equal(back.features, features)
    # and back to our layout with the convert command
    result = run("convert", path, "--out", tmp_path / "ours.h5", "--to", "sammil")
    assert result.returncode == 0, result.stderr
    assert read_bag(tmp_path / "ours.h5").context.n_groups == n_groups


def test_missing_slide_and_pt_without_coords_fail_cleanly(clam_files, tmp_path):
    root, _, _ = clam_files
    result = run(
        "add-context", root / "h5_files", "--slides", tmp_path, "--out", tmp_path / "out", "--segmenter", "fallback"
    )
    assert result.returncode == 1
    assert "no slide named" in result.stderr + result.stdout
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    result = run(
        "add-context", root / "pt_files", "--slides", tmp_path, "--out", tmp_path / "out2", "--segmenter", "fallback"
    )
    assert result.returncode == 1
    assert "--coords-dir" in result.stderr + result.stdout


def test_convert_old_patch_size_spelling_names_the_new_flag(monkeypatch, capsys, tmp_path):
    from helpers import run_cli

    out = tmp_path / "ours.h5"
    code, _, err = run_cli(monkeypatch, capsys, "convert", tmp_path / "x.h5", "--out", out, "--patch-size", "256")
    assert code == 1
    assert "--patch-size-level0 256" in err
    assert not out.exists()


def test_unknown_layout_is_refused_before_any_file_is_read(tmp_path):
    from sammil_deploy.errors import ConfigError
    from sammil_deploy.pipeline.add_context import add_context_files
    from sammil_deploy.segment import SegmentConfig

    with pytest.raises(ConfigError, match="'sammil' or 'official'"):
        add_context_files([tmp_path / "missing.h5"], tmp_path, tmp_path / "out", SegmentConfig(), layout="clam")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
