"""Cohort report.html without a browser: contents, robustness to odd reports, size at 1,000 slides, CLI, assets.

Runs are built from fake JSON reports in the layout ``infer`` writes (cheap); the browser checks are in
``test_report_browser.py``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sammil_deploy.pipeline.report import summary_rows, write_json_atomic, write_summary_csv
from sammil_deploy.viz.cohort_data import load_run
from sammil_deploy.viz.cohort_report import REPORT_NAME, write_cohort_report

CLASSES = ("normal", "tumor")
EXTERNAL = re.compile(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def fake_report(slide_id: str, p_tumor: float, *, n_patches: int = 500, top_k: int = 10) -> dict:
    """A report with the fields ``infer`` writes (pipeline/outputs.py), numbers made up."""
    timings = {"open": 0.01, "tissue": 0.2, "patching": 0.05, "segmentation": 1.5, "features": 6.0, "mil": 0.02,
               "outputs": 0.4}  # fmt: skip
    seconds = sum(timings.values())
    return {
        "schema_version": 1,
        "slide": {
            "slide_id": slide_id,
            "path": f"/data/{slide_id}.svs",
            "width_px": 40000,
            "height_px": 30000,
            "mpp": 0.25,
            "mpp_source": "metadata",
            "level_count": 3,
        },  # fmt: skip
        "prediction": {
            "label": CLASSES[int(p_tumor >= 0.4)],
            "label_index": int(p_tumor >= 0.4),
            "probabilities": {"normal": 1 - p_tumor, "tumor": p_tumor},
            "logits": [0.0, 0.0],
            "threshold": 0.4,
            "decision": "tumor if P(tumor) >= 0.4",
        },
        "counts": {
            "patches": n_patches,
            "masks": 30,
            "segments": 25,
            "instances": n_patches + 25,
            "patches_in_no_segment": 3,
        },  # fmt: skip
        "attention": {
            "top_patches": [
                {
                    "row": i,
                    "x_level0": 512 * i,
                    "y_level0": 1024,
                    "attention": 0.01 / (i + 1),
                    "rank": 1.0,
                    "segment_id": i % 4,
                }  # fmt: skip
                for i in range(top_k)
            ]
        },
        "segmenter": "fallback_kmeans",
        "backends": {
            "requested": "onnxruntime",
            "features": "onnxruntime resnet50 [CPUExecutionProvider, fp32]",
            "mil": "onnxruntime mil [CPUExecutionProvider, fp32]",
        },  # fmt: skip
        "bundle": {
            "path": "/bundles/b",
            "encoder": "resnet50_trunc",
            "encoder_random_weights": False,
            "class_names": list(CLASSES),
            "threshold": 0.4,
            "artifacts": ["mil/onnx/fp32"],
        },  # fmt: skip
        "versions": {"sammil_deploy": "0.1.0", "python": "3.11.2", "torch": "2.14.1"},
        "machine": {"hostname": "node1", "hardware": "AMD EPYC, 2 cores, no GPU", "platform": "Linux"},
        "timings_s": timings,
        "seconds": seconds,
        "patches_per_s": {"features_stage": n_patches / 6.0, "end_to_end": n_patches / seconds},
        "config": {"infer": {"backend": "onnxruntime", "device": "cpu", "precision": "fp32", "batch_size": 32}},
        "outputs": {"heatmap": f"heatmaps/{slide_id}.png", "geojson": f"geojson/{slide_id}.geojson"},
        "report_assets": {
            "attention": f"report_assets/{slide_id}/attention.jpg",
            "segments": f"report_assets/{slide_id}/segments.jpg",
            "crops": [f"report_assets/{slide_id}/top{i + 1:02d}.jpg" for i in range(top_k)],
        },
    }


def fake_run(out: Path, n_slides: int, *, failed: int = 0, seed: int = 0) -> list[dict]:
    """``n_slides`` fake reports plus ``failed`` failed slides, with the summary.csv ``infer`` would write."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_slides):
        sid = f"slide_{i:04d}"
        report = fake_report(sid, float(rng.uniform()))
        write_json_atomic(out / "reports" / f"{sid}.json", report)
        records.append({"slide": f"/data/{sid}.svs", "status": "done", "report": report,
                        "report_path": str(out / "reports" / f"{sid}.json")})  # fmt: skip
    for i in range(failed):
        detail = f"bad_{i}.svs: no tissue found; try --preset"
        records.append({"slide": f"/data/bad_{i}.svs", "status": "failed", "report": None,
                        "error_type": "TissueError", "detail": detail})  # fmt: skip
    write_summary_csv(out / "summary.csv", summary_rows(records, CLASSES), CLASSES)
    return records


def page_data(html: str) -> dict:
    match = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S)
    assert match, "no embedded data"
    return json.loads(match.group(1))


def test_page_lists_every_slide_with_its_numbers_and_failures(tmp_path):
    records = fake_run(tmp_path, 5, failed=2)
    html = write_cohort_report(tmp_path).read_text()
    data = page_data(html)
    rows = {r["id"]: r for r in data["rows"]}
    assert list(rows) == [Path(r["slide"]).stem for r in records]  # summary order, failures included
    for rec in records[:5]:
        row, report = rows[Path(rec["slide"]).stem], rec["report"]
        assert row["p"] == pytest.approx(report["prediction"]["probabilities"]["tumor"])
        assert row["label"] == report["prediction"]["label"]
        assert row["patches"] == 500
        assert row["segments"] == 25
        assert row["threshold"] == 0.4
        assert row["seconds"] == pytest.approx(report["seconds"])
        assert row["stages"] == report["timings_s"]
        assert len(row["top"]) == 10
        assert row["top"][0][:2] == [0, 1024]
        assert row["att"].endswith("attention.jpg")
        assert row["json"] == f"reports/{row['id']}.json"
    assert rows["bad_1"]["status"] == "failed"
    assert rows["bad_1"]["error"] == "TissueError bad_1.svs: no tissue found; try --preset"
    assert data["positive"] == "tumor"
    settings = dict(((g, k), v) for g, k, v in load_run(tmp_path).settings)
    assert settings[("Run", "backend")] == "onnxruntime"
    assert settings[("Machine", "hardware")] == "AMD EPYC, 2 cores, no GPU"
    assert settings[("Versions", "torch")] == "2.14.1"
    assert "random-weights-warning" not in html
    assert not EXTERNAL.search(html), "the page must not reference anything over the network"
    assert "Content-Security-Policy" in html


def test_random_weights_warning_and_mixed_settings(tmp_path):
    fake_run(tmp_path, 3)
    path = tmp_path / "reports" / "slide_0001.json"
    report = json.loads(path.read_text())
    report["bundle"]["encoder_random_weights"] = True
    report["config"]["infer"]["precision"] = "fp16"
    path.write_text(json.dumps(report))
    html = write_cohort_report(tmp_path).read_text()
    assert 'id="random-weights-warning"' in html
    settings = {k: v for _, k, v in load_run(tmp_path).settings}
    assert settings["precision"] == "fp32 (2 slides); fp16 (1 slides)"


def test_old_odd_and_hostile_reports_do_not_break_the_page(tmp_path):
    fake_run(tmp_path, 3)
    old = tmp_path / "reports" / "slide_0000.json"
    report = json.loads(old.read_text())
    for key in ("report_assets", "machine", "timings_s", "counts"):
        report.pop(key)
    report["prediction"]["threshold"] = {"probability": 0.4, "margin": -0.405}  # a threshold with a margin
    report["prediction"]["probabilities"]["tumor"] = float("nan")
    old.write_text(json.dumps(report))
    (tmp_path / "reports" / "slide_0001.json").write_text("{not json")
    hostile = fake_report("evil", 0.9)
    hostile["bundle"]["encoder"] = "</script><img src=x onerror=alert(1)>"  # shown in the settings
    write_json_atomic(tmp_path / "reports" / "evil.json", hostile)  # in reports/ but not in the summary
    html = write_cohort_report(tmp_path).read_text()
    rows = {r["id"]: r for r in page_data(html)["rows"]}
    assert rows["slide_0000"]["att"] == "heatmaps/slide_0000.png"  # falls back to the heatmap PNG
    assert rows["slide_0000"]["p"] is None
    assert rows["slide_0000"]["patches"] is None
    assert rows["slide_0000"]["threshold"] == 0.4
    assert rows["slide_0000"]["threshold_note"] == "margin -0.405"
    assert rows["slide_0001"]["status"] == "failed"
    assert "unreadable report" in rows["slide_0001"]["error"]
    assert "evil" in rows
    assert html.count("</script>") == 2  # no text closes a script element early
    assert "<img src=x" not in html  # escaped in the settings table
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html


def test_thousand_slides_stay_small(tmp_path):
    fake_run(tmp_path, 1000, failed=20)
    path = write_cohort_report(tmp_path)
    size_mb = path.stat().st_size / 1e6
    data = page_data(path.read_text())
    assert len(data["rows"]) == 1020
    assert size_mb < 3.0, f"report.html is {size_mb:.2f} MB for 1,000 slides"


def test_report_command_rebuilds_and_refuses_a_non_run(tmp_path):
    from sammil_deploy.cli import app

    fake_run(tmp_path / "run", 2, failed=1)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["report"] == str(tmp_path / "run" / REPORT_NAME)
    assert (tmp_path / "run" / REPORT_NAME).is_file()
    assert not list((tmp_path / "run").glob("*.partial"))
    (tmp_path / "empty").mkdir()
    from sammil_deploy.errors import ConfigError

    with pytest.raises(ConfigError, match="not an infer output folder"):
        write_cohort_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / REPORT_NAME).exists()


def test_summary_csv_is_what_the_report_reads(tmp_path):
    """The report reads failures from summary.csv: its columns must keep carrying them."""
    fake_run(tmp_path, 1, failed=1)
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"slide_id", "status", "error_type", "detail"} <= set(rows[0])


def test_segment_overlay_colours_segments_and_draws_their_borders():
    from sammil_deploy.viz.report_assets import NO_SEGMENT_RGB, segment_colours, segment_overlay

    white = np.full((40, 60, 3), 255, np.uint8)
    coords = np.array([[0, 0], [200, 0], [400, 0], [0, 200]])  # level 0; the thumbnail is 10x smaller
    segments = np.array([3, 3, 7, -1])
    image = segment_overlay(white, (600, 400), coords, 200, segments)
    colours = segment_colours(segments)
    assert (colours[0] == colours[1]).all()
    assert (colours[0] != colours[2]).any()
    assert tuple(colours[3]) == NO_SEGMENT_RGB
    blend = np.round(0.5 * 255 + 0.5 * colours.astype(float)).astype(np.uint8)
    for i, (x, y) in enumerate([(5, 5), (25, 5), (45, 5), (5, 25)]):  # patch centres, inside the borders
        assert (image[y, x] == blend[i]).all(), i
    assert (image[20, 5] == (20, 20, 20)).all()  # a border: segment 3 above, no segment below
    assert (image[5, 20] != (20, 20, 20)).any()  # none inside one segment (patches 0 and 1)
    assert (image[35, 55] == 255).all()  # no patch there: untouched
