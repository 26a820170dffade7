"""The cohort report of a real (small) ``infer`` run, opened in a real headless Chromium.

One CLI ``infer`` run per module: a torch-only bundle (random ResNet50-trunc, untrained 1024-d MIL head, fallback
segmenter), three small synthetic slides and a corrupt file that fails. The page is driven over the DevTools
protocol (``sammil_deploy.viz.browser``): every slide is in the table, sorting by P(class) orders the rows, every
picture loads, nothing is requested from the network, and a screenshot is saved. Tests that need the browser
skip where no Chromium is installed (``.ci/run`` installs one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sammil_deploy.viz.browser import HeadlessChromium, find_chromium
from sammil_deploy.viz.report_assets import CROP_SIDE_PX, MAX_CROPS

needs_browser = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium installed: `apt-get install chromium` (or set SAMMIL_CHROMIUM)"
)
READY = "document.body && document.body.dataset.ready === '1'"
ROW_IDS = "[...document.querySelectorAll('tr.row')].map(tr => tr.dataset.id)"
P_COLUMN = 3  # thumbnail, slide, decision, P(class), ...


@pytest.fixture(scope="module")
def infer_run(tmp_path_factory, random_resnet_weights) -> tuple[Path, list[Path]]:
    """``sammil-deploy infer`` over three small slides and a corrupt one; returns (out folder, slides)."""
    from sammil_deploy.bundle import make_bundle
    from sammil_deploy.cli import app
    from sammil_deploy.mil.checkpoint import make_meta, save_checkpoint
    from sammil_deploy.mil.config import ModelConfig
    from sammil_deploy.mil.model import build_model
    from sammil_deploy.pipeline.extract import load_extract_config
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    root = tmp_path_factory.mktemp("report_run")
    torch.manual_seed(3)
    model = build_model(ModelConfig(in_dim=1024))
    with torch.no_grad():
        model.classifier.weight.mul_(0.02)  # probabilities away from 0 and 1, so they differ between slides
    meta = make_meta(ModelConfig(in_dim=1024), class_names=("normal", "tumor"), group_tokens=True,
                     feature_extractor="resnet50_trunc", threshold=0.5)  # fmt: skip
    checkpoint = save_checkpoint(root / "ckpt" / "fold0", model, meta)
    weights = root / "resnet50_trunc_RANDOM.safetensors"  # marked as the demo marks its random encoder
    save_file(load_file(random_resnet_weights), weights, metadata={"random_weights": "true"})
    preprocess = load_extract_config(
        preset="bwh_biopsy", overrides={"features.weights": weights, "segment.segmenter": "fallback"}
    )
    bundle = root / "bundle"
    make_bundle(bundle, checkpoint, None, preprocess)
    slides = []
    for seed, tumour in ((21, False), (22, True), (23, False)):
        path = root / "slides" / f"case_{seed}.svs"
        path.parent.mkdir(exist_ok=True)
        spec = SyntheticSlideSpec(width_px=2048, height_px=1536, mpp=0.5, seed=seed, tumour=tumour, n_lumens=0)
        write_synthetic_slide(path, spec)
        slides.append(path)
    corrupt = root / "slides" / "corrupt.svs"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    out = root / "out"
    args = ["infer", str(root / "slides"), "--bundle", str(bundle), "--out", str(out), "--backend", "torch",
            "--device", "cpu", "--num-workers", "0", "--batch-size", "8", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # the corrupt slide fails, the others go on
    assert json.loads(result.stdout)["report"] == str(out / "report.html")
    return out, slides


def test_infer_writes_the_page_and_its_pictures(infer_run):
    out, slides = infer_run
    assert (out / "report.html").is_file()
    html = (out / "report.html").read_text()
    for slide in slides:
        report = json.loads((out / "reports" / f"{slide.stem}.json").read_text())
        assets = report["report_assets"]
        top = report["attention"]["top_patches"]
        assert len(assets["crops"]) == min(len(top), MAX_CROPS) > 0
        for rel in (assets["attention"], assets["segments"], *assets["crops"]):
            assert (out / rel).is_file(), rel
            assert f'"{rel}"' in html  # linked relative to the page
        assert Image.open(out / assets["crops"][0]).size == (CROP_SIDE_PX, CROP_SIDE_PX)
        assert report["machine"]["hardware"]
        assert report["bundle"]["encoder_random_weights"]  # the bundle read the weights' metadata
    assert '"id":"corrupt"' in html
    assert "UnsupportedSlideError" in html
    assert not list(out.rglob("*.partial"))


def test_top_patch_crop_is_that_patch(infer_run):
    """The first crop shows the most-attended patch: the same pixels as reading it at level 0 (JPEG-close)."""
    from sammil_deploy.slide import open_slide
    from sammil_deploy.viz.report_assets import shrink

    out, slides = infer_run
    report = json.loads((out / "reports" / f"{slides[1].stem}.json").read_text())
    best, size = report["attention"]["top_patches"][0], report["patch"]["size_level0_px"]
    with open_slide(slides[1]) as reader:
        expected = shrink(reader.read_region((best["x_level0"], best["y_level0"]), 0, (size, size)), CROP_SIDE_PX)
    crop = np.asarray(Image.open(out / report["report_assets"]["crops"][0]).convert("RGB"))
    assert np.abs(crop.astype(float) - expected).mean() < 6.0
    other = report["attention"]["top_patches"][-1]
    if (other["x_level0"], other["y_level0"]) != (best["x_level0"], best["y_level0"]):
        with open_slide(slides[1]) as reader:
            elsewhere = shrink(reader.read_region((other["x_level0"], 0), 0, (size, size)), CROP_SIDE_PX)
        assert np.abs(crop.astype(float) - elsewhere).mean() > np.abs(crop.astype(float) - expected).mean()


def _p_values(browser: HeadlessChromium) -> list[float | None]:
    cells = browser.evaluate(f"[...document.querySelectorAll('tr.row')].map(tr => tr.cells[{P_COLUMN}].textContent)")
    return [float(c[:5]) if c else None for c in cells]


@needs_browser
def test_page_in_headless_chromium(infer_run, tmp_path):
    out, slides = infer_run
    expected_ids = {s.stem for s in slides} | {"corrupt"}
    with HeadlessChromium(width_px=1400, height_px=1000) as browser:
        browser.open(out / "report.html", ready=READY)
        assert set(browser.evaluate(ROW_IDS)) == expected_ids  # the table has every slide
        warning = browser.evaluate("document.getElementById('random-weights-warning').innerText")
        assert "Random encoder weights" in warning
        failed_row = browser.evaluate("document.querySelector('tr.row[data-id=corrupt]').innerText")
        assert "UnsupportedSlideError" in failed_row

        header = f"document.querySelectorAll('#slide-head th')[{P_COLUMN}]"
        assert browser.evaluate(f"{header}.textContent").startswith("P(tumor)")
        browser.evaluate(f"{header}.click()")
        ps = _p_values(browser)
        assert ps[-1] is None  # the failed slide has no probability: last either way
        assert ps[:-1] == sorted(ps[:-1], reverse=True)
        assert len(set(ps[:-1])) > 1
        browser.evaluate(f"{header}.click()")
        ps = _p_values(browser)
        assert ps[:-1] == sorted(ps[:-1])
        assert ps[-1] is None

        for slide_id in expected_ids:  # open every slide's details: attention, segments, crops
            browser.evaluate(f"document.querySelector('tr.row[data-id={slide_id}]').click()")
        assert browser.evaluate("document.querySelectorAll('tr.detail').length") == len(expected_ids)
        images = browser.evaluate(
            "Promise.all([...document.images].map(i => { i.loading = 'eager'; return i.decode().catch(() => 0); }))"
            ".then(() => [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]))"
        )
        crops = [json.loads((out / "reports" / f"{s.stem}.json").read_text())["report_assets"]["crops"] for s in slides]
        assert len(images) == sum(3 + len(c) for c in crops)  # table thumbnail, attention, segments, top crops
        broken = [src for src, complete, width in images if not complete or width == 0]
        assert not broken, f"broken images: {broken}"

        requested = browser.requested_urls()  # no request leaves the machine: the page and its pictures only
        assert len(requested) == 1 + len({src for src, _, _ in images}), requested
        assert all(url.startswith("file://") for url in requested), requested
        resources = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
        assert all(name.startswith("file://") for name in resources), resources
        shot = browser.screenshot(tmp_path / "report.png", full_page=True)
    with Image.open(shot) as png:
        assert png.format == "PNG"
        assert png.width == 1400
        assert png.height > 1000


@needs_browser
def test_thousand_slides_page_filters_pages_and_sorts(tmp_path):
    from test_report import fake_run

    from sammil_deploy.viz.cohort_report import write_cohort_report

    fake_run(tmp_path, 1000, failed=5)
    html = write_cohort_report(tmp_path)
    with HeadlessChromium() as browser:
        browser.open(html, ready=READY)
        assert len(browser.evaluate(ROW_IDS)) == 50  # one page rendered, not 1,005 rows
        assert browser.evaluate("document.getElementById('count').textContent") == "Showing 1–50 of 1005 slides"
        assert browser.evaluate("[...document.querySelectorAll('img.thumb')].every(i => i.loading === 'lazy')")
        browser.evaluate("document.getElementById('next').click()")
        assert browser.evaluate(ROW_IDS)[0] == "slide_0050"
        browser.evaluate(
            "const s = document.getElementById('search'); s.value = 'slide_0999';s.dispatchEvent(new Event('input'))"
        )
        assert browser.evaluate(ROW_IDS) == ["slide_0999"]
        browser.evaluate(
            "const t = document.getElementById('search'); t.value = ''; t.dispatchEvent(new Event('input'));"
            "const f = document.getElementById('status-filter'); f.value = 'failed';"
            "f.dispatchEvent(new Event('change'))"
        )
        assert sorted(browser.evaluate(ROW_IDS)) == [f"bad_{i}" for i in range(5)]
        browser.evaluate(
            "const g = document.getElementById('status-filter'); g.value = ''; g.dispatchEvent(new Event('change'));"
            "const z = document.getElementById('page-size'); z.value = '0'; z.dispatchEvent(new Event('change'));"
            f"document.querySelectorAll('#slide-head th')[{P_COLUMN}].click()"
        )
        ps = _p_values(browser)
        assert len(ps) == 1005
        assert ps[:1000] == sorted(ps[:1000], reverse=True)
        assert ps[1000:] == [None] * 5


@needs_browser
def test_report_command_saves_a_screenshot(infer_run, tmp_path):
    from sammil_deploy.cli import app

    out, _ = infer_run
    png = tmp_path / "shot.png"
    result = CliRunner().invoke(app, ["report", str(out), "--screenshot", str(png), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"report": str(out / "report.html"), "screenshot": str(png)}
    with Image.open(png) as image:
        assert image.size == (1440, 900)
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # a rendered page, not a blank one
