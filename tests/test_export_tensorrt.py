"""TensorRT: fail-fast without GPU/TensorRT, profiles, ORT TensorRT options; real builds under gpu/trt markers.

Loading and refusing plans is :mod:`sammil_deploy.runtime.trt_backend`'s job (tested with the runtime); the GPU
tests here build plans with :func:`build_engine` and check them through it.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from sammil_deploy.cli import main
from sammil_deploy.errors import BackendError, MissingDependencyError
from sammil_deploy.export.config import DimRange
from sammil_deploy.export.tensorrt import (
    attach_timing_cache,
    ort_tensorrt_providers,
    profile_from_ranges,
    require_tensorrt_gpu,
    save_timing_cache,
)

HAS_TRT_GPU = torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


def test_profile_from_metadata_specs():
    inputs = [
        {"name": "image_embeddings", "shape": [1, 256, 64, 64]},
        {"name": "point_coords", "shape": ["num_prompts", 1, 2]},
    ]
    profile = profile_from_ranges(inputs, {"num_prompts": DimRange(1, 64, 256)})
    assert profile["point_coords"] == ((1, 1, 2), (64, 1, 2), (256, 1, 2))
    assert profile["image_embeddings"] == ((1, 256, 64, 64),) * 3
    providers = ort_tensorrt_providers(profile, cache_dir="/tmp/c", workspace_bytes=1 << 30)
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider"
    assert providers[-1] == "CPUExecutionProvider"
    assert options["trt_profile_max_shapes"] == "image_embeddings:1x256x64x64,point_coords:256x1x2"
    assert options["trt_engine_cache_enable"] is True


class _BuilderConfigStandIn:
    """TensorRT's documented timing-cache contract, for the CPU: a blob from another TensorRT version or GPU is
    refused by ``set_timing_cache`` (False), and ``get_timing_cache`` is None while no cache is attached."""

    def __init__(self, accepted_header: bytes = b"TRT-11.1/sm_90") -> None:
        self.accepted_header = accepted_header
        self.attached = None

    def create_timing_cache(self, blob: bytes) -> bytes:
        return bytes(blob)

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False  # a foreign cache must never be merged silently
        if cache and not cache.startswith(self.accepted_header):
            return False
        self.attached = cache
        return True

    def get_timing_cache(self):
        if self.attached is None:
            return None
        blob = self.attached or self.accepted_header

        class _Cache:
            def serialize(self) -> bytes:
                return blob

        return _Cache()


def test_timing_cache_from_another_gpu_falls_back_to_a_fresh_one(tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"TRT-10.13/sm_80 stale timings")
    config = _BuilderConfigStandIn()
    assert attach_timing_cache(config, cache) is False
    assert config.attached == b""  # a fresh cache, so the build still records timings
    assert save_timing_cache(config, cache)
    assert cache.read_bytes() == b"TRT-11.1/sm_90"
    # the rewritten cache is now accepted
    assert attach_timing_cache(_BuilderConfigStandIn(), cache) is True


def test_missing_timing_cache_after_build_does_not_crash(tmp_path):
    config = _BuilderConfigStandIn()  # nothing attached: get_timing_cache() is None
    assert save_timing_cache(config, tmp_path / "timing.cache") is False
    assert not (tmp_path / "timing.cache").exists()


@pytest.mark.skipif(HAS_TRT_GPU, reason="TensorRT and a GPU are present")
def test_require_tensorrt_gpu_names_what_is_missing():
    with pytest.raises(MissingDependencyError, match="--trt needs TensorRT on a CUDA GPU"):
        require_tensorrt_gpu()


@pytest.mark.skipif(HAS_TRT_GPU, reason="TensorRT and a GPU are present")
def test_cli_trt_fails_fast_and_writes_nothing(monkeypatch, capsys, tmp_path, tiny_mil_checkpoint):
    out = tmp_path / "out"
    argv = [
        "sammil-deploy",
        "export",
        "--out",
        str(out),
        "--checkpoint",
        str(tiny_mil_checkpoint),
        "--sam-model",
        "tiny",
        "--allow-random-weights",
        "--trt",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    _, err = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "--trt needs TensorRT on a CUDA GPU" in err
    assert "Drop --trt" in err.replace("\n", " ")
    assert not out.exists()


# --- real TensorRT: skipped without a GPU and the tensorrt package -----------------------------------------------


@pytest.mark.gpu
@pytest.mark.trt
def test_build_load_run_mil_engine_and_refuse_tampered_sidecar(tmp_path, tiny_export):
    from sammil_deploy.export import mil as mil_export
    from sammil_deploy.export.spec import read_metadata
    from sammil_deploy.export.tensorrt import TrtEngine, build_engine, trt_runner
    from sammil_deploy.export.verify import onnx_runner, verify_parity
    from sammil_deploy.runtime.artifacts import sidecar_path

    report, _ = tiny_export
    artifact = next(p for p in report.parts if p.part == "mil").artifacts[0]
    profile = profile_from_ranges(read_metadata(artifact.path)["inputs"], {"num_instances": DimRange(1, 256, 4096)})
    cache = tmp_path / "timing.cache"
    engine = build_engine(
        artifact.path,
        tmp_path / "mil.plan",
        profile,
        precision="fp32",
        workspace_bytes=1 << 30,
        timing_cache=cache,
        part="mil",
    )
    assert engine.plan.is_file()
    assert cache.is_file()
    meta = json.loads(sidecar_path(engine.plan).read_text())
    assert meta["source_onnx_sha256"] == artifact.sha256
    assert meta["profiles"][0]["features"][2] == [4096, 64]
    rng = np.random.default_rng(0)
    inputs = [mil_export.random_bag(64, n, rng) for n in (3, 1000)]
    parity = verify_parity(onnx_runner(artifact.path), trt_runner(TrtEngine(engine.plan)), inputs, "fp32")
    assert parity.passed, parity.summary()
    meta["tensorrt_version"] = "0.0.0"
    sidecar_path(engine.plan).write_text(json.dumps(meta))
    with pytest.raises(BackendError, match="11|TensorRT 0.0.0"):
        TrtEngine(engine.plan).load()


@pytest.mark.gpu
@pytest.mark.trt
def test_export_all_with_trt_builds_and_verifies_plans(tmp_path, tiny_mil_checkpoint):
    from sammil_deploy.export.api import export_all
    from sammil_deploy.export.config import ExportConfig

    cfg = ExportConfig(precision="fp16", workspace_gib=2.0)
    report = export_all(
        tiny_mil_checkpoint,
        None,
        "tiny",
        None,
        tmp_path,
        cfg,
        only="sam-encoder,sam-decoder,mil",
        trt=True,
        allow_random_weights=True,
    )
    assert report.passed, "\n".join(report.failures())
    assert all(p.engine is not None and p.engine.plan.is_file() for p in report.parts)
    assert any(r.notes.get("backend") == "tensorrt" for p in report.parts for r in p.parity)
