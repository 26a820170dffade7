"""`sammil-deploy preprocess` end to end: real and synthetic slides, bad inputs, resume, JSON, config files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import files_under, run_cli
from PIL import Image

from sammil_deploy.errors import ConfigError, SlideError
from sammil_deploy.patching import read_coords_h5
from sammil_deploy.pipeline.batch import run_batch
from sammil_deploy.pipeline.preprocess import PreprocessConfig, load_preprocess_config, preprocess_slides


def test_real_slide_writes_coords_and_preview(monkeypatch, capsys, tmp_path, real_slide_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        monkeypatch, capsys, "preprocess", real_slide_path, "--out", out, "--preset", "bwh_biopsy", "--json"
    )
    assert code == 0
    payload = json.loads(stdout)
    assert payload["done"] == 1
    assert payload["all_succeeded"]
    result = payload["slides"][0]["result"]
    assert files_under(out) == ["patches/CMU-1-Small-Region.h5", "previews/CMU-1-Small-Region.png"]
    coords = read_coords_h5(out / "patches/CMU-1-Small-Region.h5")
    assert len(coords.grid) == result["n_patches"] > 0
    assert coords.attrs["mpp"] == pytest.approx(0.499)
    assert coords.attrs["tissue_config"]["a_t"] == 1.0
    xy = coords.grid.coords_level0_xy
    assert (xy >= 0).all()
    assert (xy[:, 0] < 2220).all()
    assert (xy[:, 1] < 2967).all()
    preview = np.asarray(Image.open(out / "previews/CMU-1-Small-Region.png"))
    assert max(preview.shape[:2]) == 1024
    assert preview.shape[2] == 3


def test_synthetic_slide_preview_shows_contours_and_grid(monkeypatch, capsys, tmp_path, annulus_slide):
    path, truth = annulus_slide
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "preprocess", path, "--out", out)
    assert code == 0, err
    assert "annulus.tif" in err
    assert "done" in err
    grid = read_coords_h5(out / "patches/annulus.h5").grid
    centres = grid.coords_level0_xy + grid.patch_size_level0_px // 2
    assert (np.hypot(*(centres - truth["centre_xy"]).T) > truth["hole_radius_px"] - 40).all()
    image = np.asarray(Image.open(out / "previews/annulus.png")).astype(int)
    scale = image.shape[0] / truth["size_wh"][1]
    cx, cy = (np.array(truth["centre_xy"]) * scale).astype(int)
    green = (image[..., 1] > 150) & (image[..., 0] < 80) & (image[..., 2] < 80)
    blue = (image[..., 2] > 200) & (image[..., 0] < 80)
    # Tissue contour (green) on the outer circle, hole contour (blue) on the inner one.
    r_out, r_in = truth["radius_px"] * scale, truth["hole_radius_px"] * scale
    row = slice(cy - 2, cy + 3)
    assert green[row, int(cx + r_out) - 8 : int(cx + r_out) + 8].any()
    assert blue[row, int(cx + r_in) - 8 : int(cx + r_in) + 8].any()
    assert not green[row, cx - 20 : cx + 20].any()
    # Patch outlines: dark grid lines inside the ring, none in the white corner.
    dark = image.sum(axis=2) < 200
    assert dark[int(cy - (r_in + r_out) / 2) - 40 : int(cy - (r_in + r_out) / 2) + 40, cx - 40 : cx + 40].any()
    assert not dark[:20, :20].any()


def test_synthetic_tissue_slide_patches_lie_on_tissue(
    monkeypatch, capsys, tmp_path, synthetic_slide, synthetic_slide_truth
):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "preprocess", synthetic_slide, "--out", out, "--preset", "bwh_biopsy", "--json"
    )
    assert code == 0, err
    assert json.loads(stdout)["slides"][0]["result"]["n_contours"] >= 1
    grid = read_coords_h5(out / "patches/synthetic_tumour.h5").grid
    size = grid.patch_size_level0_px
    fractions = [synthetic_slide_truth.tissue_fraction(tuple(xy), (size, size)) for xy in grid.coords_level0_xy]
    assert min(fractions) > 0.02  # every patch touches real tissue
    # The union of patches covers nearly all of the tissue (only fragments below a_t are left out).
    truth_mask, cell = synthetic_slide_truth.tissue_mask, synthetic_slide_truth.mask_downsample
    covered = np.zeros_like(truth_mask)
    for x, y in grid.coords_level0_xy:
        covered[int(y // cell) : int(np.ceil((y + size) / cell)), int(x // cell) : int(np.ceil((x + size) / cell))] = (
            True
        )
    assert (covered & truth_mask).sum() / truth_mask.sum() > 0.9


def test_bad_inputs_fail_with_one_line_and_leave_nothing(monkeypatch, capsys, tmp_path, blank_slide, tiny_slide):
    out = tmp_path / "out"
    fake = tmp_path / "fake.svs"
    fake.write_text("this is not a slide\n")
    cases = [
        (tmp_path / "missing.svs", "no such file or folder"),
        (fake, "fake.svs: not a slide format"),
        (blank_slide, "blank.svs: no tissue found"),
        (tiny_slide, "tiny.svs: the slide (400x300 level-0 px) is smaller than one patch"),
    ]
    for slide, message in cases:
        code, stdout, err = run_cli(monkeypatch, capsys, "preprocess", slide, "--out", out)
        assert code == 1, slide
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith("error:"), err
        assert message in lines[0], err
        assert stdout == ""
        assert files_under(out) == [], slide


def test_folder_continues_past_failures_and_resumes(monkeypatch, capsys, tmp_path, annulus_slide):
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "good.tif").symlink_to(annulus_slide[0])
    (slides / "fake.svs").write_text("not a slide")
    (slides / "notes.txt").write_text("ignored: not a slide suffix")
    out = tmp_path / "out"
    code, stdout, _ = run_cli(monkeypatch, capsys, "preprocess", slides, "--out", out, "--json")
    payload = json.loads(stdout)
    assert code == 1
    assert (payload["done"], payload["failed"]) == (1, 1)
    failed = next(s for s in payload["slides"] if s["status"] == "failed")
    assert failed["error_type"] == "UnsupportedSlideError"
    assert failed["slide"].endswith("fake.svs")
    assert files_under(out) == ["patches/good.h5", "previews/good.png"]
    before = (out / "patches/good.h5").stat().st_mtime_ns
    code, stdout, _ = run_cli(monkeypatch, capsys, "preprocess", slides / "good.tif", "--out", out, "--json")
    assert code == 0
    assert json.loads(stdout)["slides"][0]["status"] == "skipped"
    assert (out / "patches/good.h5").stat().st_mtime_ns == before
    code, stdout, _ = run_cli(
        monkeypatch,
        capsys,
        "preprocess",
        slides / "good.tif",
        "--out",
        out,
        "--json",
        "--overwrite",
        "--patch-size",
        "1024",
    )
    assert code == 0
    assert json.loads(stdout)["slides"][0]["status"] == "done"
    assert read_coords_h5(out / "patches/good.h5").grid.patch_size_level0_px == 1024


def test_config_file_preset_and_flags_layer_in_order(tmp_path):
    toml = tmp_path / "pre.toml"
    toml.write_text('preset = "tcga"\nmpp = 0.25\n[tissue]\nsthresh = 20\n[patch]\npatch_size_px = 256\n')
    cfg = load_preprocess_config(toml, overrides={"patch.step_px": 128, "tissue.close": None})
    assert cfg.tissue.a_t == 16.0
    assert cfg.tissue.sthresh == 20
    assert cfg.tissue.close == 4
    assert cfg.patch.patch_size_px == 256
    assert cfg.patch.step_px == 128
    assert cfg.mpp == 0.25
    assert load_preprocess_config(toml, preset="bwh_biopsy").tissue.a_t == 1.0  # argument beats file preset
    toml.write_text("[tissue]\nsthres = 20\n")
    with pytest.raises(ConfigError, match="did you mean 'sthresh'"):
        load_preprocess_config(toml)


def test_unknown_config_key_is_a_one_line_cli_error(monkeypatch, capsys, tmp_path, real_slide_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("[patch]\npatch_sise_px = 256\n")
    code, _, err = run_cli(
        monkeypatch, capsys, "preprocess", real_slide_path, "--out", tmp_path / "o", "--config", toml
    )
    assert code == 1
    assert "patch_size_px" in err
    assert len(err.strip().splitlines()) == 1


def test_batch_runner_reraises_without_continue_on_error(tmp_path):
    def fail(path):
        raise SlideError(f"{path.name}: broken")

    summary = run_batch([tmp_path / "a", tmp_path / "b"], fail, lambda p: tmp_path / f"{p.name}.out")
    assert [r.status for r in summary.records] == ["failed", "failed"]
    assert not summary.all_succeeded
    with pytest.raises(SlideError, match="a: broken"):
        run_batch([tmp_path / "a"], fail, lambda p: tmp_path / "x", continue_on_error=False)
    with pytest.raises(ConfigError, match="share a slide id"):
        preprocess_slides([tmp_path / "a.svs", tmp_path / "a.tif"], PreprocessConfig(), tmp_path)
