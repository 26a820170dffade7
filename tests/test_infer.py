"""End-to-end inference: bundle checks, torch vs ONNX Runtime parity, outputs, resumable cohorts, CLI, Ray.

One real export (random ResNet50-trunc weights + a 1024-d MIL head, FP32 ONNX) is made per module; the
fallback segmenter keeps segmentation deterministic and weight-free; slides are small synthetic ones plus the
real CMU-1 region (tissue preset bwh_biopsy, as the bundle records).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_context
from PIL import Image
from typer.testing import CliRunner

from sammil_deploy.bundle import load_bundle, make_bundle
from sammil_deploy.errors import BackendError, CheckpointError, ConfigError
from sammil_deploy.pipeline.extract import load_extract_config
from sammil_deploy.pipeline.infer import InferConfig, output_path, run_slide, run_slides
from sammil_deploy.pipeline.report import stable_view

CFG = {"device": "cpu", "batch_size": 8, "num_workers": 1, "intra_op_threads": 2, "heatmap_max_size_px": 768}


def _preprocess(weights: Path, **overrides):
    return load_extract_config(
        preset="bwh_biopsy", overrides={"features.weights": weights, "segment.segmenter": "fallback", **overrides}
    )


@pytest.fixture(scope="module")
def checkpoint_1024(tmp_path_factory) -> Path:
    """Attention-MIL on 1024-d features; the classifier is scaled down so probabilities are not saturated."""
    from sammil_deploy.mil.checkpoint import make_meta, save_checkpoint
    from sammil_deploy.mil.config import ModelConfig
    from sammil_deploy.mil.model import build_model

    torch.manual_seed(1)
    cfg = ModelConfig(in_dim=1024)
    model = build_model(cfg)
    with torch.no_grad():
        model.classifier.weight.mul_(0.02)
    meta = make_meta(
        cfg, class_names=("normal", "tumor"), group_tokens=True, feature_extractor="resnet50_trunc", threshold=0.4
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt1024") / "fold0", model, meta)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, checkpoint_1024, random_resnet_weights) -> Path:
    from sammil_deploy.export.api import export_all
    from sammil_deploy.export.config import ExportConfig

    out = tmp_path_factory.mktemp("infer_export")
    report = export_all(
        checkpoint_1024, None, "tiny", random_resnet_weights, out, ExportConfig(precision="fp32"), only="resnet50,mil"
    )
    assert report.passed
    return out


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, checkpoint_1024, export_dir, random_resnet_weights) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "bundle"
    make_bundle(out, checkpoint_1024, export_dir, _preprocess(random_resnet_weights))
    return out


@pytest.fixture(scope="module")
def small_slides(tmp_path_factory) -> list[Path]:
    """Three 1536x1280 px synthetic slides at 0.5 mpp (a few patches of 512 px each)."""
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    folder = tmp_path_factory.mktemp("cohort")
    paths = []
    for seed in (11, 12, 13):
        path = folder / f"slide_{seed}.svs"
        write_synthetic_slide(path, SyntheticSlideSpec(width_px=1536, height_px=1280, mpp=0.5, seed=seed, n_lumens=0))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tumour_slide(tmp_path_factory):
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    path = tmp_path_factory.mktemp("tumour") / "tumour.svs"
    spec = SyntheticSlideSpec(width_px=2560, height_px=2048, mpp=0.5, seed=11, tumour=True, n_lumens=1)
    return path, write_synthetic_slide(path, spec)


# --- bundle -------------------------------------------------------------------------------------------------------


def test_bundle_records_parts_and_preprocessing(bundle_dir, random_resnet_weights):
    bundle = load_bundle(bundle_dir)
    assert {(a.part, a.format, a.precision) for a in bundle.artifacts} == {
        ("resnet50", "onnx", "fp32"),
        ("mil", "onnx", "fp32"),
    }
    assert bundle.feature_dim == 1024
    assert bundle.class_names == ("normal", "tumor")
    assert bundle.threshold == 0.4
    assert bundle.decision_threshold.margin == pytest.approx(math.log(0.4 / 0.6))  # decisions use the margin
    assert bundle.preprocess.tissue.a_t == 1.0  # bwh_biopsy, as given at make time
    assert bundle.preprocess.segment.resolved_segmenter == "fallback"
    assert bundle.encoder_weights.read_bytes() == random_resnet_weights.read_bytes()
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    assert all(not Path(rel).is_absolute() for rel in manifest["files"])  # movable


def test_bundle_refuses_feature_dim_mismatch(tmp_path, tiny_mil_checkpoint, random_resnet_weights):
    # tiny_mil_checkpoint takes 64-d features; the encoder gives 1024.
    with pytest.raises(CheckpointError, match="expects 64-dim features"):
        make_bundle(tmp_path / "b", tiny_mil_checkpoint, None, _preprocess(random_resnet_weights))
    assert not (tmp_path / "b").exists()
    assert not (tmp_path / "b.partial").exists()


def test_bundle_refuses_preprocessing_mismatch(tmp_path, checkpoint_1024, export_dir, random_resnet_weights):
    # The ONNX ResNet was exported with bicubic resizing; features trained with bilinear would not match.
    pre = _preprocess(random_resnet_weights, **{"features.interpolation": "bilinear"})
    with pytest.raises(BackendError, match="interpolation: ONNX 'bicubic' vs bundle 'bilinear'"):
        make_bundle(tmp_path / "b", checkpoint_1024, export_dir, pre)
    assert not (tmp_path / "b").exists()


def test_bundle_refuses_mil_export_of_another_checkpoint(tmp_path, export_dir, random_resnet_weights):
    from sammil_deploy.mil.checkpoint import make_meta, save_checkpoint
    from sammil_deploy.mil.config import ModelConfig
    from sammil_deploy.mil.model import build_model

    cfg = ModelConfig(in_dim=1024)
    meta = make_meta(cfg, class_names=("a", "b"), group_tokens=True, feature_extractor="resnet50_trunc")
    other = save_checkpoint(tmp_path / "other", build_model(cfg), meta)
    with pytest.raises(BackendError, match="another MIL checkpoint"):
        make_bundle(tmp_path / "b", other, export_dir, _preprocess(random_resnet_weights))


def test_bundle_refuses_changed_or_missing_files(tmp_path, bundle_dir):
    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    load_bundle(copy)  # a moved/copied bundle loads
    sidecar = next((copy / "mil").glob("*.json"))
    sidecar.write_text(sidecar.read_text().replace('"threshold": 0.4', '"threshold": 0.9'))
    with pytest.raises(CheckpointError, match="changed since the bundle was made"):
        load_bundle(copy)
    next((copy / "onnx").glob("mil_head*.onnx")).unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_bundle(copy, verify_hashes=False)
    with pytest.raises(ConfigError, match="not a bundle"):
        load_bundle(tmp_path)


# --- one slide: backends agree, outputs are right -------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_runs(bundle_dir, real_slide_path, tumour_slide, tmp_path_factory):
    bundle = load_bundle(bundle_dir)
    runs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path_factory.mktemp(f"parity_{backend}")
        cfg = InferConfig(backend=backend, save_features=True, **CFG)
        runs[backend] = {
            name: run_slide(path, bundle, cfg, out)
            for name, path in (("real", real_slide_path), ("tumour", tumour_slide[0]))
        }
    return runs


@pytest.mark.parametrize("slide", ["real", "tumour"])
def test_torch_and_onnxruntime_give_the_same_prediction(parity_runs, slide):
    ref, ort = parity_runs["torch"][slide], parity_runs["onnxruntime"][slide]
    p_ref, p_ort = ref.probabilities["tumor"], ort.probabilities["tumor"]
    assert 0.01 < p_ref < 0.99, "probability saturated: the comparison would say nothing"
    assert abs(p_ref - p_ort) < 1e-4
    np.testing.assert_allclose(ref.attention, ort.attention, rtol=1e-3, atol=1e-7)
    assert ref.n_patches == ort.n_patches > 5
    assert ref.report["backends"]["features"].startswith("torch")
    assert ort.report["backends"]["features"].startswith("onnxruntime")
    assert set(ref.stage_seconds) == {"open", "tissue", "patching", "segmentation", "features", "mil", "outputs"}


def test_saved_features_match_extract_format_and_mil_input(parity_runs):
    from sammil_deploy.features.store import read_bag

    result = parity_runs["onnxruntime"]["real"]
    bag = read_bag(result.paths["features"])
    assert bag.n_patches == result.n_patches
    assert bag.dim == 1024
    assert len(result.attention) == bag.n_patches + bag.context.n_groups  # group tokens were appended
    assert result.report["counts"]["segments"] == bag.context.n_groups


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_extract_and_infer_give_identical_features(parity_runs, bundle_dir, real_slide_path, tmp_path, backend):
    """One encoding engine and one framing rule: `extract` writes the features and context `infer` saved."""
    from dataclasses import replace

    from sammil_deploy.features.store import read_bag
    from sammil_deploy.pipeline.extract import extract_slide

    bundle = load_bundle(bundle_dir)
    model_file = bundle.require("resnet50", "onnx", "fp32").path if backend == "onnxruntime" else None
    features_cfg = replace(
        bundle.preprocess.features, backend=backend, model_file=model_file, device="cpu",
        batch_size=CFG["batch_size"], num_workers=CFG["num_workers"], intra_op_threads=CFG["intra_op_threads"],
    )  # fmt: skip
    cfg = replace(bundle.preprocess, features=features_cfg, save_segmentation=False)
    extracted = read_bag(extract_slide(real_slide_path, cfg, tmp_path).features_path)
    inferred = read_bag(parity_runs[backend]["real"].paths["features"])
    np.testing.assert_array_equal(extracted.coords_level0_xy, inferred.coords_level0_xy)
    np.testing.assert_array_equal(extracted.features, inferred.features)
    # One framing rule: the same spatial context (segments, memberships, groups) from both commands.
    assert_same_context(inferred.context, extracted.context)
    assert extracted.context.n_groups >= 2
    for bag in (extracted, inferred):
        assert bag.attrs["feature_backend"].startswith(backend)
        assert bag.attrs["slide_reader"] == "tiled-jpeg"  # CMU-1's JPEG tiles: the tile reader's
        assert bag.attrs["resize_method"] == "pil-antialiased-bicubic-host"


def test_geojson_has_one_level0_tile_per_patch(parity_runs, tumour_slide):
    from sammil_deploy.features.store import read_bag

    result = parity_runs["torch"]["tumour"]
    tiles = json.loads(result.paths["geojson"].read_text())
    bag = read_bag(result.paths["features"])
    assert tiles["type"] == "FeatureCollection"
    assert len(tiles["features"]) == bag.n_patches
    truth = tumour_slide[1]
    size = bag.patch_size_level0_px
    for feature, (x, y), seg, att in zip(
        tiles["features"], bag.coords_level0_xy, bag.context.segment_id, result.attention, strict=False
    ):
        props = feature["properties"]
        assert props["objectType"] == "tile"
        assert feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert ring == [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        assert props["measurements"]["segment_id"] == seg
        assert props["measurements"]["attention"] == pytest.approx(float(att), rel=1e-6)
        # Level-0 frame: every tile lies on tissue of the synthetic ground truth.
        assert truth.tissue_fraction((int(x), int(y)), (size, size)) > 0.05


def test_heatmap_paints_patches_by_attention(parity_runs, tumour_slide):
    result = parity_runs["torch"]["tumour"]
    image = np.asarray(Image.open(result.paths["heatmap"]).convert("RGB")).astype(int)
    tiles = json.loads(result.paths["geojson"].read_text())["features"]
    ranks = np.array([t["properties"]["measurements"]["attention_rank"] for t in tiles])
    from sammil_deploy.slide import open_slide

    with open_slide(tumour_slide[0]) as reader:
        width, height = reader.info.dimensions_wh
        thumb_w = reader.thumbnail(result.report["config"]["infer"]["heatmap_max_size_px"]).shape[1]
    title_h = image.shape[0] - round(height * thumb_w / width)  # the title strip sits above the thumbnail
    scale = thumb_w / width

    def centre_rgb(i: int) -> np.ndarray:
        (x0, y0), (x1, y1) = tiles[i]["geometry"]["coordinates"][0][0], tiles[i]["geometry"]["coordinates"][0][2]
        cx, cy = round((x0 + x1) / 2 * scale), round((y0 + y1) / 2 * scale) + title_h
        return image[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3).mean(0)

    hot, cold = centre_rgb(int(ranks.argmax())), centre_rgb(int(ranks.argmin()))
    assert hot[0] > hot[2] + 30  # most attended: red end of the map
    assert cold[2] > cold[0] + 30  # least attended: blue end
    assert image.shape[1] > thumb_w  # colour bar appended


# --- cohorts --------------------------------------------------------------------------------------------------------


class _Interrupt(KeyboardInterrupt):
    """Stands in for Ctrl-C / a kill after the first slide."""


@pytest.fixture(scope="module")
def cohort_full(bundle_dir, small_slides, tmp_path_factory) -> Path:
    """An uninterrupted ONNX Runtime run over the three small slides."""
    out = tmp_path_factory.mktemp("cohort_full")
    summary = run_slides(small_slides, load_bundle(bundle_dir), InferConfig(backend="onnxruntime", **CFG), out)
    assert [r.status for r in summary.records] == ["done"] * 3
    return out


def _same_outputs(out_a: Path, out_b: Path, slides: list[Path]) -> None:
    for slide in slides:
        a = json.loads(output_path(out_a, slide, "report").read_text())
        b = json.loads(output_path(out_b, slide, "report").read_text())
        assert stable_view(a) == stable_view(b)
        for kind in ("heatmap", "geojson"):
            assert output_path(out_a, slide, kind).read_bytes() == output_path(out_b, slide, kind).read_bytes()
    rows_a = [r for r in _summary(out_a) if Path(r["slide"]) in slides]
    assert rows_a == _summary(out_b)


def test_cohort_resumes_after_interruption_with_identical_outputs(bundle_dir, small_slides, cohort_full, tmp_path):
    bundle = load_bundle(bundle_dir)
    cfg = InferConfig(backend="onnxruntime", **CFG)

    def stop_after_first(record):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        run_slides(small_slides, bundle, cfg, tmp_path, on_record=stop_after_first)
    assert output_path(tmp_path, small_slides[0], "report").exists()
    assert not output_path(tmp_path, small_slides[1], "report").exists()
    resumed = run_slides(small_slides, bundle, cfg, tmp_path)
    assert [r.status for r in resumed.records] == ["skipped", "done", "done"]
    assert not list(tmp_path.rglob("*.partial"))
    _same_outputs(cohort_full, tmp_path, small_slides)


def _summary(out: Path) -> list[dict]:
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    # Status/detail say done or skipped (resumed); seconds and the report's folder differ between runs by nature.
    return [{k: v for k, v in row.items() if k not in ("seconds", "report", "status", "detail")} for row in rows]


def test_cli_reports_and_skips_corrupt_slides(bundle_dir, small_slides, blank_slide, tmp_path):
    from sammil_deploy.cli import app

    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 8)  # TIFF magic, garbage after it
    slide_list = tmp_path / "slides.txt"
    slide_list.write_text(f"# cohort\n{corrupt}\n{small_slides[0]}\n{blank_slide}\n")
    out = tmp_path / "out"
    args = ["infer", str(slide_list), "--bundle", str(bundle_dir), "--out", str(out), "--backend", "onnxruntime",
            "--device", "cpu", "--num-workers", "0", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    status = {Path(r["slide"]).name: (r["status"], r["error_type"]) for r in summary["slides"]}
    assert status == {
        "corrupt.svs": ("failed", "UnsupportedSlideError"),
        small_slides[0].name: ("done", None),
        "blank.svs": ("failed", "TissueError"),
    }
    with open(out / "summary.csv") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert rows["corrupt"]["status"] == "failed"
    assert "corrupt" in rows["corrupt"]["detail"]
    assert rows[small_slides[0].stem]["label"] in ("normal", "tumor")
    assert not output_path(out, corrupt, "heatmap").exists()
    assert not output_path(out, blank_slide, "report").exists()


def test_exported_backend_refuses_a_missing_artifact(bundle_dir):
    from sammil_deploy.pipeline.backends import open_slide_backends

    with pytest.raises(BackendError, match="no resnet50 as onnx \\(fp16\\)"):
        open_slide_backends(load_bundle(bundle_dir, verify_hashes=False), "onnxruntime", device="cpu", precision="fp16")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "tensorrt"])
def test_cli_backend_value_reaches_open_backend_as_given(backend, bundle_dir, small_slides, tmp_path, monkeypatch):
    """``--backend X`` is the runtime kind every network of the run is opened with (nothing re-derives it)."""
    import sammil_deploy.runtime as runtime
    from sammil_deploy.cli import app

    if backend == "tensorrt" and torch.cuda.is_available():
        pytest.skip("checks the refusal without a GPU; this bundle has no TensorRT plans")
    opened: list[str] = []
    real_open_backend = runtime.open_backend

    def recording_open_backend(kind, artifact, **options):
        opened.append(kind)
        return real_open_backend(kind, artifact, **options)

    monkeypatch.setattr(runtime, "open_backend", recording_open_backend)
    out = tmp_path / "out"
    args = ["infer", str(small_slides[0]), "--bundle", str(bundle_dir), "--out", str(out), "--backend", backend,
            "--device", "cpu", "--num-workers", "0", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    if backend == "tensorrt":
        assert isinstance(result.exception, ConfigError)  # main() maps it to the config exit code
        assert "backend tensorrt needs a CUDA device" in str(result.exception)
        assert opened == []
        return
    assert result.exit_code == 0, result.output
    assert opened == [backend, backend]  # the patch encoder and the MIL head (fallback segmenter: no SAM)
    report = json.loads(output_path(out, small_slides[0], "report").read_text())
    assert report["backends"]["requested"] == backend


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (extra 'ray')")
def test_ray_local_cluster_gives_the_same_outputs(bundle_dir, small_slides, cohort_full, tmp_path):
    from sammil_deploy.pipeline.distributed import run_slides_ray

    cfg = InferConfig(backend="onnxruntime", **CFG)
    slides = small_slides[:2]
    summary = run_slides_ray(
        slides, bundle_dir, cfg, tmp_path, workers=2, init_kwargs={"num_cpus": 2, "log_to_driver": False}
    )
    assert [r.status for r in summary.records] == ["done", "done"]
    _same_outputs(cohort_full, tmp_path, slides)


def test_ray_placement_follows_the_flags():
    from sammil_deploy.pipeline.executors import RayPlacement, ray_placement

    assert ray_placement(False) is None
    assert ray_placement(True, "auto", 3) == RayPlacement(address="auto", workers=3)
    with pytest.raises(ConfigError, match="need --ray"):
        ray_placement(False, workers=2)
