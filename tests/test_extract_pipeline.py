"""`extract_slide` / `sammil-deploy extract` end to end on the real slide and a small synthetic cohort."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import files_under, run_cli
from safetensors.torch import save_file

from sammil_deploy.features.encoders import create_encoder
from sammil_deploy.features.encoding import EncoderConfig, extract_features
from sammil_deploy.features.store import read_bag
from sammil_deploy.pipeline.extract import extract_slide, load_extract_config
from sammil_deploy.pipeline.feature_backend import open_feature_backend
from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return create_encoder("resnet50_trunc", allow_random=True)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, encoder):
    path = tmp_path_factory.mktemp("weights") / "resnet50_trunc.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two small synthetic slides and one file that is not a slide."""
    folder = tmp_path_factory.mktemp("cohort")
    for i, (w, h) in enumerate([(2048, 1536), (2560, 2048)]):
        write_synthetic_slide(
            folder / f"syn_{i}.svs", SyntheticSlideSpec(width_px=w, height_px=h, n_tissue_pieces=1, seed=i + 3)
        )
    (folder / "broken.svs").write_bytes(b"not a slide")
    return folder


def test_real_slide_bag_is_consistent(tmp_path, real_slide_path, encoder):
    cfg = load_extract_config(preset="bwh_biopsy", overrides={
        "patch.patch_size_px": 1024, "features.allow_random": True, "features.num_workers": 0,
        "features.batch_size": 4, "segment.segmenter": "fallback",
    })  # fmt: skip
    result = extract_slide(real_slide_path, cfg, tmp_path, encoder=encoder)
    assert files_under(tmp_path) == ["features/CMU-1-Small-Region.h5", "segments/CMU-1-Small-Region.npz"]
    bag = read_bag(result.features_path)
    ctx = bag.require_context()
    assert bag.n_patches == result.n_patches > 0
    assert bag.dim == 1024
    assert bag.patch_size_level0_px == 1024
    assert ctx.n_groups == result.n_groups > 0

    # Rows are in coords order: re-encode two patches directly from their coordinates.
    rows = [0, bag.n_patches - 1]
    direct_cfg = EncoderConfig(allow_random=True, num_workers=0, device="cpu", backend="torch", reader="openslide")
    with open_feature_backend(encoder, direct_cfg) as backend:
        direct = extract_features(
            real_slide_path, bag.coords_level0_xy[rows], 1024, backend, direct_cfg,
            input_size_px=224, interpolation="bicubic",
        )  # fmt: skip
    np.testing.assert_allclose(bag.features[rows], direct, rtol=1e-4, atol=1e-4)

    # Eq. 3: each group token is the mean of its member patches' stored features.
    for g, gid in enumerate(ctx.group_ids):
        members = ctx.membership_patch[ctx.membership_mask == gid]
        assert len(members) > 0
        expected = bag.features[members].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(ctx.group_features[g], expected, rtol=1e-5, atol=1e-5)
    # A patch's category is its smallest containing mask.
    area_of = dict(zip(ctx.group_ids.tolist(), ctx.group_area_px.tolist(), strict=True))
    for i in range(bag.n_patches):
        masks = ctx.membership_mask[ctx.membership_patch == i]
        if len(masks) == 0:
            assert ctx.segment_id[i] == -1
        else:
            assert ctx.segment_area_px[i] == min(area_of[m] for m in masks.tolist())
    assert bag.attrs["encoder_weights_sha256"] == "random"
    assert bag.attrs["slide_mpp"] == pytest.approx(0.499)
    assert bag.attrs["resize_interpolation"] == "bicubic"


def test_cli_cohort_resumes_and_records_failures(monkeypatch, capsys, tmp_path, cohort, weights_file):
    out = tmp_path / "out"
    args = (
        "extract",
        cohort,
        "--out",
        out,
        "--preset",
        "bwh_biopsy",
        "--patch-size",
        "1024",
        "--encoder-weights",
        weights_file,
        "--num-workers",
        "1",
        "--batch-size",
        "4",
    )
    from sammil_deploy.patching.reader_pool import ReaderPool

    reads, read_through_pool = [], ReaderPool.batches

    def spy(pool, job, *rest, **kw):  # pass-through: records which pool processes read which slide
        reads.append((id(pool), pool.pids, Path(job.slide_path).name))
        return read_through_pool(pool, job, *rest, **kw)

    monkeypatch.setattr(ReaderPool, "batches", spy)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert sorted(name for *_, name in reads) == ["syn_0.svs", "syn_1.svs"]
    assert len({(pool, pids) for pool, pids, _ in reads}) == 1  # one set of reader processes for the run
    assert code == 1  # broken.svs failed; the others went on
    assert "syn_0.svs" in err
    assert "broken.svs" in err
    assert "not a slide format" in err
    assert files_under(out) == ["features/syn_0.h5", "features/syn_1.h5", "segments/syn_0.npz", "segments/syn_1.npz"]
    sha = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    for name in ("syn_0", "syn_1"):
        bag = read_bag(out / "features" / f"{name}.h5")
        assert bag.attrs["encoder_weights_sha256"] == sha
        assert bag.require_context().n_groups > 0
        assert np.isfinite(bag.features).all()
    mtime = (out / "features/syn_0.h5").stat().st_mtime_ns

    code, stdout, _ = run_cli(monkeypatch, capsys, *args, "--json")
    assert code == 1
    payload = json.loads(stdout)
    status = {record["slide"].rsplit("/", 1)[-1]: record["status"] for record in payload["slides"]}
    assert status == {"broken.svs": "failed", "syn_0.svs": "skipped", "syn_1.svs": "skipped"}
    assert (out / "features/syn_0.h5").stat().st_mtime_ns == mtime


def test_cli_refuses_without_weights_and_writes_nothing(monkeypatch, capsys, tmp_path, real_slide_path):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "extract", real_slide_path, "--out", out)
    assert code == 1
    assert "--allow-random-weights" in err
    assert "--encoder-weights" in err
    assert not out.exists()


def test_cli_rejects_conflicting_weight_sources(monkeypatch, capsys, tmp_path, real_slide_path, weights_file):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "extract",
        real_slide_path,
        "--out",
        tmp_path / "o",
        "--encoder-weights",
        weights_file,
        "--allow-random-weights",
    )
    assert code == 1
    assert "one weights source" in err
