"""`sammil-deploy export`: JSON report, exit codes, bad options rejected before any file is written."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli


def test_export_mil_json(monkeypatch, capsys, tmp_path, tiny_mil_checkpoint):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        monkeypatch,
        capsys,
        "export",
        "--out",
        out,
        "--checkpoint",
        tiny_mil_checkpoint,
        "--only",
        "mil",
        "--precision",
        "fp16",
        "--max-instances",
        "5000",
        "--json",
    )
    assert code == 0
    payload = json.loads(stdout)
    assert payload["passed"] is True
    assert [p["part"] for p in payload["parts"]] == ["mil"]
    assert payload["config"]["mil_instances"]["max"] == 5000
    files = sorted(p.name for p in out.iterdir())
    assert files == ["export_manifest.json", "mil_head.fp16.onnx", "mil_head.fp32.onnx"]
    parity = payload["parts"][0]["parity"]
    assert [r["precision"] for r in parity] == ["fp32", "fp16"]
    assert all(r["passed"] for r in parity)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "mil"], "needs --checkpoint"),
        (["--only", "bogus"], "unknown part"),
        (["--only", "resnet50"], "--encoder-weights"),
        (["--only", "sam-encoder"], "--sam-checkpoint"),
        (["--only", "sam-encoder", "--allow-random-weights"], "auto needs --sam-checkpoint"),
        (["--only", "sam-encoder", "--precision", "int8", "--allow-random-weights", "--sam-model", "tiny"], "int8"),
        (["--only", "resnet50", "--precision", "int8", "--allow-random-weights"], "--calibration-slide"),
        (["--precision", "fp8"], "precision must be one of"),
    ],
)
def test_bad_options_fail_before_writing(monkeypatch, capsys, tmp_path, args, message):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "export", "--out", out, *args)
    assert code == 1
    assert message in err.replace("\n", " ")
    assert not out.exists()


def test_build_profiles_load_and_are_ordered():
    from pathlib import Path

    from sammil_deploy.export.config import load_export_config

    recipes = sorted((Path(__file__).resolve().parents[1] / "export").glob("*.toml"))
    assert {p.stem for p in recipes} >= {"h100_h200", "a100", "l4", "jetson_orin"}
    configs = {p.stem: load_export_config(p) for p in recipes}
    assert all(c.gpu_class == name for name, c in configs.items())
    # bigger GPUs get larger profile maxima
    assert (
        configs["h100_h200"].resnet_batch.max > configs["l4"].resnet_batch.max > configs["jetson_orin"].resnet_batch.max
    )


def test_size_limits_cap_the_profile_axes():
    from sammil_deploy.export.config import DimRange, ExportConfig, with_size_limits

    cfg = ExportConfig(resnet_batch=DimRange(1, 256, 512), mil_instances=DimRange(16, 4096, 65536))
    capped = with_size_limits(cfg, max_batch=64, max_instances=8)
    assert capped.resnet_batch == DimRange(1, 64, 64)
    assert capped.mil_instances == DimRange(8, 8, 8)
    assert with_size_limits(cfg) == cfg
