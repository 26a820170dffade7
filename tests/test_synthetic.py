"""Synthetic slides: OpenSlide reads them as real pyramids, truth matches pixels, CLI writes a cohort."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest

from sammil_deploy.errors import ConfigError, SlideError
from sammil_deploy.slide import open_slide
from sammil_deploy.slide.cohort import make_demo_cohort, plan_demo_cohort
from sammil_deploy.slide.synthetic import SyntheticSlideSpec, synthetic_truth, write_synthetic_slide

SMALL = {"width_px": 2048, "height_px": 1536, "tumour": True, "tumour_radius_um": 120.0, "n_tissue_pieces": 1}


def _read(path: Path, xy_level0: tuple[int, int], level: int, size_wh: tuple[int, int]) -> np.ndarray:
    with open_slide(path) as reader:
        return reader.read_region(xy_level0, level, size_wh).astype(np.float64)


def _block_mean(image: np.ndarray, k: int) -> np.ndarray:
    h, w = image.shape[0] // k, image.shape[1] // k
    return image[: h * k, : w * k].reshape(h, k, w, k, -1).mean(axis=(1, 3))


def _patches(truth, size: int = 512):
    w, h = truth.dimensions_wh
    return [(x, y) for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]


def test_openslide_reports_aperio_pyramid_and_mpp(synthetic_slide):
    with open_slide(synthetic_slide) as reader:
        info = reader.info
    assert info.vendor == "aperio"
    assert info.level_dimensions_wh == ((6144, 5120), (1536, 1280), (384, 320))
    assert info.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
    assert info.mpp == pytest.approx(0.25)
    assert info.mpp_source == "metadata"
    assert info.objective_power == pytest.approx(40.0)
    with openslide.OpenSlide(str(synthetic_slide)) as slide:
        assert "thumbnail" in slide.associated_images
        assert slide.properties["tiff.ResolutionUnit"] == "centimeter"
        assert int(slide.properties["openslide.level[0].tile-width"]) == 512


def test_generic_vendor_takes_mpp_from_resolution_tags(tmp_path):
    path = tmp_path / "generic.tif"
    write_synthetic_slide(path, SyntheticSlideSpec(**{**SMALL, "mpp": 0.5, "vendor": "generic", "tile_px": 256}))
    with open_slide(path) as reader:
        info = reader.info
    assert info.vendor == "generic-tiff"
    assert info.mpp == pytest.approx(0.5)
    assert info.objective_power is None
    assert info.level_dimensions_wh == ((2048, 1536), (512, 384))


def test_lower_levels_agree_with_level0_averages(synthetic_slide, synthetic_slide_truth):
    # A 2048 px box around the tumour centroid: tumour, normal tissue, lumens and glass edges.
    ys, xs = np.nonzero(synthetic_slide_truth.tumour_mask)
    s = synthetic_slide_truth.mask_downsample
    x0 = int(np.clip(xs.mean() * s - 1024, 0, 6144 - 2048)) // 16 * 16
    y0 = int(np.clip(ys.mean() * s - 1024, 0, 5120 - 2048)) // 16 * 16
    level0 = _read(synthetic_slide, (x0, y0), 0, (2048, 2048))
    assert level0.std() > 20  # the box is not uniform, so agreement below means something
    for level, k in ((1, 4), (2, 16)):
        lower = _read(synthetic_slide, (x0, y0), level, (2048 // k, 2048 // k))
        averaged = _block_mean(level0, k)
        # Per-pixel textures and noise are drawn per level, so compare means: overall, per 64 and 256 px block.
        assert np.abs((lower - averaged).reshape(-1, 3).mean(0)).max() < 1.5
        blocks64 = np.abs(_block_mean(lower, 64 // k) - _block_mean(averaged, 64 // k))
        assert blocks64.mean() < 4.0
        assert blocks64.max() < 30.0
        assert np.abs(_block_mean(lower, 256 // k) - _block_mean(averaged, 256 // k)).max() < 6.0
        # The same check against a region 256 px away fails by far: the criterion has power.
        shifted = _read(synthetic_slide, (x0 + 256, y0), level, (2048 // k, 2048 // k))
        assert np.abs(_block_mean(shifted, 64 // k) - _block_mean(averaged, 64 // k)).max() > 60.0


def test_same_seed_same_bytes_other_seed_other_pixels(tmp_path):
    small = {**SMALL, "width_px": 1280, "height_px": 1024}
    spec = SyntheticSlideSpec(**small, seed=11)
    paths = [tmp_path / d / "s.svs" for d in "abc"]  # same name: the Aperio header records the file name
    for path in paths:
        path.parent.mkdir()
    write_synthetic_slide(paths[0], spec)
    write_synthetic_slide(paths[1], spec, workers=1)  # thread count must not matter
    write_synthetic_slide(paths[2], SyntheticSlideSpec(**small, seed=12))
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert digests[0] == digests[1]
    pixels = [_read(p, (0, 0), 0, (1280, 1024)) for p in paths]
    assert np.array_equal(pixels[0], pixels[1])
    assert np.abs(pixels[0] - pixels[2]).mean() > 5.0


def test_truth_matches_pixels_and_tumour_is_darker_and_more_purple(synthetic_slide, synthetic_slide_truth):
    truth = synthetic_slide_truth
    assert truth.has_tumour
    assert truth.tumour_mask.sum() < truth.tissue_mask.sum()
    groups: dict[str, list[tuple[int, int]]] = {"glass": [], "normal": [], "tumour": []}
    for xy in _patches(truth, 256):
        tissue, tumour = truth.tissue_fraction(xy, (256, 256)), truth.tumour_fraction(xy, (256, 256))
        if tissue == 0:
            groups["glass"].append(xy)
        elif tissue == 1 and tumour == 0:
            groups["normal"].append(xy)
        elif tumour == 1:
            groups["tumour"].append(xy)
    assert all(len(v) >= 4 for v in groups.values()), {k: len(v) for k, v in groups.items()}
    means = {}
    for name, xys in groups.items():
        picks = [xys[i] for i in np.linspace(0, len(xys) - 1, 6).astype(int)]
        rgb = np.stack([_read(synthetic_slide, xy, 0, (256, 256)).reshape(-1, 3).mean(0) for xy in picks])
        means[name] = rgb.mean(0)
    grey = {k: v.mean() for k, v in means.items()}
    purple = {k: v[2] - v[0] for k, v in means.items()}  # blue minus red: haematoxylin vs eosin
    assert grey["glass"] > 238
    assert np.ptp(means["glass"]) < 6
    assert grey["normal"] < grey["glass"] - 25
    assert grey["tumour"] < grey["normal"] - 25
    assert purple["tumour"] > purple["normal"] + 10


def test_tumour_fraction_weights_cells_by_overlap(synthetic_slide_truth):
    truth, s = synthetic_slide_truth, int(synthetic_slide_truth.mask_downsample)
    # A box aligned to mask cells: plain mean of those cells.
    expected = truth.tumour_mask[10:90, 20:120].mean()
    assert truth.tumour_fraction((20 * s, 10 * s), (100 * s, 80 * s)) == pytest.approx(expected)
    # Half of a single tumour cell.
    iy, ix = np.argwhere(truth.tumour_mask)[0]
    assert truth.tumour_fraction((ix * s, iy * s), (s // 2, s)) == pytest.approx(1.0)
    assert truth.tumour_fraction((ix * s - s // 2, iy * s), (s, s)) == pytest.approx(
        0.5 + 0.5 * truth.tumour_mask[iy, ix - 1]
    )
    assert truth.tumour_fraction((10**6, 10**6), (512, 512)) == 0.0
    whole = truth.tissue_fraction((0, 0), truth.dimensions_wh)
    assert 0.1 < whole < 0.6


def test_blank_and_tiny_slides(blank_slide, tiny_slide):
    with open_slide(blank_slide) as reader:
        assert reader.info.level_dimensions_wh == ((2048, 1536), (512, 384))
        glass = reader.read_level(0).astype(np.int16)
    assert 240 <= glass.mean() <= 248
    assert np.percentile(np.abs(glass - glass.mean()), 99.9) < 12  # only scanner noise
    with open_slide(tiny_slide) as reader:
        assert reader.info.level_dimensions_wh == ((400, 300),)
        image = reader.read_level(0).astype(np.int16)
    assert (image.mean(axis=2) < 220).mean() > 0.1  # it holds tissue


def test_spec_validation():
    for bad in ({"tile_px": 300}, {"level_downsample": 3}, {"tumour": True, "n_tissue_pieces": 0},
                {"width_px": 8}, {"mpp": 0}, {"jpeg_quality": 0}, {"vendor": "hamamatsu"}):  # fmt: skip
        with pytest.raises(ConfigError):
            SyntheticSlideSpec(**bad)
    assert SyntheticSlideSpec(width_px=40000, height_px=40000).level_downsamples == (1, 4, 16, 64)
    assert SyntheticSlideSpec(width_px=40000, height_px=30000, level_downsample=2).level_dimensions_wh[-1] == (625, 468)


def test_failed_write_leaves_no_file(tmp_path):
    class Stop(Exception):
        pass

    def stop(done, total):
        if done == 3:
            raise Stop

    path = tmp_path / "x.svs"
    with pytest.raises(Stop):
        write_synthetic_slide(path, SyntheticSlideSpec(**SMALL, tile_px=256), progress=stop)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SlideError, match="does not exist"):
        write_synthetic_slide(tmp_path / "missing" / "x.svs", SyntheticSlideSpec(**SMALL))


def test_truth_without_writing_matches_writer(tmp_path):
    spec = SyntheticSlideSpec(**SMALL, seed=5)
    written = write_synthetic_slide(tmp_path / "t.svs", spec)
    planned = synthetic_truth(spec)
    assert np.array_equal(written.tumour_mask, planned.tumour_mask)
    assert np.array_equal(written.tissue_mask, planned.tissue_mask)


def test_demo_plan_is_balanced_and_deterministic():
    plan = plan_demo_cohort(7, seed=3, size_px=2048)
    assert [p[0] for p in plan] == [f"demo_{i:03d}" for i in range(7)]
    assert sum(label for _, label, _ in plan) == 3
    assert all(spec.tumour == bool(label) for _, label, spec in plan)
    assert plan == plan_demo_cohort(7, seed=3, size_px=2048)
    assert [p[2].seed for p in plan] != [p[2].seed for p in plan_demo_cohort(7, seed=4, size_px=2048)]
    with pytest.raises(ConfigError):
        plan_demo_cohort(1)


def test_make_demo_cohort_library(tmp_path):
    cohort = make_demo_cohort(tmp_path / "lib", n_slides=2, seed=1, size_px=1024)
    assert [s.label for s in cohort.slides] in ([0, 1], [1, 0])
    for s in cohort.slides:
        assert s.truth.has_tumour == bool(s.label)
        with open_slide(s.path) as reader:
            assert reader.info.mpp == pytest.approx(0.25)
    assert sorted(p.name for p in cohort.out_dir.iterdir()) == ["demo_000.svs", "demo_001.svs", "labels.csv"]


def test_cli_make_demo_data_writes_cohort(tmp_path):
    from typer.testing import CliRunner

    from sammil_deploy.cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["make-demo-data", "--out", str(out), "--n-slides", "2", "--size-px", "1536",
                                      "--seed", "2", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    with (out / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["slide_id"] for r in rows] == ["demo_000", "demo_001"]
    assert sorted(int(r["label"]) for r in rows) == [0, 1]
    assert [(s["slide_id"], s["label"]) for s in payload["slides"]] == [(r["slide_id"], int(r["label"])) for r in rows]
    for row in rows:
        with open_slide(out / f"{row['slide_id']}.svs") as reader:
            assert reader.info.level_count == 2
            assert reader.info.dimensions_wh == (1536, 1229)
    assert not list(out.glob("*.partial"))


@pytest.mark.parametrize("args", [["--n-slides", "0"], ["--size-px", "100"]])
def test_cli_bad_arguments_exit_nonzero_and_write_nothing(tmp_path, args):
    out = tmp_path / "demo"
    exe = Path(sys.executable).with_name("sammil-deploy")
    result = subprocess.run([str(exe), "make-demo-data", "--out", str(out), *args], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "error:" in result.stderr
    assert "--n-slides" in result.stderr or "--size-px" in result.stderr
    assert not out.exists()
