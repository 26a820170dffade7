"""The one-command demo: its recipe matches training/demo.toml; end to end (slow) it leaves every artifact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sammil_deploy.demo.config import STAGES, DemoConfig, write_recipe_toml
from sammil_deploy.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_demo_recipe_is_training_demo_toml(tmp_path):
    from sammil_deploy.config import to_dict
    from sammil_deploy.mil.config import load_recipe

    written = write_recipe_toml(tmp_path / "demo_recipe.toml")
    for preset in ("sammil", "abmil"):
        from_file = load_recipe(REPO / "training" / "demo.toml", preset=preset)
        assert to_dict(load_recipe(written, preset=preset)) == to_dict(from_file)
    assert load_recipe(written, preset="abmil").sammil.beta == 0.0  # the preset still turns SAM-MIL parts off


def test_demo_config_is_validated():
    with pytest.raises(ConfigError, match=">= 8 slides"):
        DemoConfig(n_slides=4)
    quick = DemoConfig.quick()
    assert quick.n_slides < DemoConfig().n_slides
    assert quick.size_px < DemoConfig().size_px


def _assert_sane_thresholds(out: Path) -> None:
    """Every trained demo checkpoint and the bundle record a threshold strictly inside (0, 1) with a finite margin.

    (The benchmark stage's random-weight head has no threshold; it is not a trained checkpoint.)
    """
    trained = [*(out / "train").glob("*/*.json"), *(out / "bundle" / "mil").glob("*.json")]
    sidecars = [json.loads(p.read_text()) for p in trained if p.with_suffix(".safetensors").is_file()]
    assert len(sidecars) >= 2, "the demo wrote no checkpoints"
    for meta in sidecars:
        assert 0.0 < meta["threshold"] < 1.0, meta["threshold"]
        assert math.isfinite(meta["threshold_margin"])
    for manifest in out.rglob("bundle.json"):
        mil = json.loads(manifest.read_text())["mil"]
        assert 0.0 < mil["threshold"] < 1.0
        assert math.isfinite(mil["threshold_margin"])
    for report in out.rglob("reports/*.json"):
        decision = json.loads(report.read_text())["prediction"]["decision"]
        assert ">= 1.0" not in decision, decision
        assert "logit_" in decision, decision


def _assert_report_renders(page: Path, slide_ids: set[str], tmp_path: Path) -> None:
    """The demo's cohort page in a real headless Chromium: every slide, sortable, no broken picture, no network."""
    from sammil_deploy.viz.browser import HeadlessChromium, find_chromium

    assert page.is_file()
    if find_chromium() is None:  # the rest of the demo is still checked; the browser tests say why they skip
        return
    with HeadlessChromium(width_px=1400, height_px=1000) as browser:
        browser.open(page, ready="document.body && document.body.dataset.ready === '1'")
        rows = "[...document.querySelectorAll('tr.row')].map(tr => tr.dataset.id)"
        assert set(browser.evaluate(rows)) == slide_ids
        browser.evaluate("document.querySelectorAll('#slide-head th')[3].click()")  # sort by P(class)
        cells = browser.evaluate("[...document.querySelectorAll('tr.row')].map(tr => tr.cells[3].textContent)")
        ps = [float(c[:5]) for c in cells]
        assert ps == sorted(ps, reverse=True)
        images = browser.evaluate(
            "Promise.all([...document.images].map(i => { i.loading = 'eager'; return i.decode().catch(() => 0); }))"
            ".then(() => [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth]))"
        )
        assert images
        assert all(width > 0 for _, width in images), images
        assert all(url.startswith("file://") for url in browser.requested_urls())
        assert browser.screenshot(tmp_path / "demo_report.png").stat().st_size > 0


@pytest.mark.slow
def test_demo_end_to_end_and_resume(tmp_path):
    from sammil_deploy.cli import app

    out = tmp_path / "demo"
    first = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick"])
    assert first.exit_code == 0, first.output
    summary = json.loads((out / "demo_summary.json").read_text())
    names = [s["name"] for s in summary["stages"]]
    assert names[:3] == list(STAGES[:3])
    assert {"train sammil", "train abmil", "export", "bundle", "infer torch", "infer onnxruntime", "benchmark"} <= set(
        names
    )
    assert all(s["status"] == "done" for s in summary["stages"])
    for stage in summary["stages"]:
        for path in stage["artifacts"].values():
            assert Path(path).exists(), f"{stage['name']}: {path} missing"
    metrics = summary["metrics"]
    assert set(metrics["held_out"])
    assert all(p["label"] in (0, 1) for p in metrics["held_out"].values())
    assert metrics["torch_vs_onnxruntime_max_prob_diff"] < 1e-3  # the exported graphs agree with PyTorch
    assert 0.0 <= metrics["sammil_cv_test_auc"]["mean"] <= 1.0
    assert 0.0 <= metrics["abmil_cv_test_auc"]["mean"] <= 1.0
    bench = json.loads((out / "benchmark" / "results.json").read_text())
    assert any(r["component"] == "mil" and r["backend"] == "ort-cpu" and r["status"] == "ok" for r in bench["results"])
    assert "cross-validated test AUC" in first.stdout
    assert "held-out" in first.stdout
    _assert_sane_thresholds(out)
    _assert_report_renders(Path(metrics["cohort_reports"]["onnxruntime"]), set(metrics["held_out"]), tmp_path)
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick"])  # resumes: every stage reused
    assert again.exit_code == 0, again.output
    assert all(s["status"] == "reused" for s in json.loads((out / "demo_summary.json").read_text())["stages"])


def test_demo_sam_folder_claim_and_weights(tmp_path):
    from sammil_deploy.demo import sam as demo_sam
    from sammil_deploy.segment.sam_model import build_sam

    demo_sam.claim_folder(tmp_path, "sam")
    demo_sam.claim_folder(tmp_path, "sam")  # the same segmenter again: fine
    with pytest.raises(ConfigError, match="made with --sam"):
        demo_sam.claim_folder(tmp_path, "fallback")
    weights = demo_sam.write_random_sam(tmp_path / "weights" / demo_sam.SAM_WEIGHTS_NAME, seed=0)
    sam = build_sam("tiny", weights)  # loads with weights_only, as extract and export do
    assert float(sam.mask_decoder.iou_prediction_head.layers[-1].bias.mean()) > 0.3  # the calibrated IoU head
    overrides = demo_sam.segment_overrides(weights)
    assert list(overrides)[0] == "segment.sam_checkpoint"  # set before the segmenter that needs it
    assert demo_sam.segment_overrides(None) == {"segment.segmenter": "fallback"}
