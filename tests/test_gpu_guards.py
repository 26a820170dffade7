"""CPU-side checks of the GPU paths: TensorRT binding alignment and profile-sized calls, build profiles' opt
batches matching what `infer` runs, and one-line errors for GPU requests on a machine without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sammil_deploy.errors import InputSpecError
from sammil_deploy.runtime.trt_backend import TRT_ADDRESS_ALIGNMENT_BYTES, is_trt_aligned, row_chunks

ROOT = Path(__file__).resolve().parents[1]


def test_trt_alignment_rejects_the_fast_automask_label_slice():
    base = 1 << 20  # the caching allocator hands out 512-byte aligned blocks
    int32_bytes = 4
    # labels[start:stop] at points_per_batch 16 starts 64 B into the block: TensorRT needs 256 B
    assert not is_trt_aligned(base + 16 * int32_bytes)
    assert is_trt_aligned(base + 64 * int32_bytes)
    assert is_trt_aligned(base)
    assert TRT_ADDRESS_ALIGNMENT_BYTES == 256


def test_row_chunks_split_only_row_inputs_and_keep_order():
    embedding = np.zeros((1, 4, 2, 2), np.float32)
    coords = np.arange(7 * 2, dtype=np.float32).reshape(7, 1, 2)
    labels = np.arange(7, dtype=np.float32).reshape(7, 1)
    inputs = {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels}
    chunks = row_chunks(inputs, frozenset({"point_coords", "point_labels"}), 3)
    assert [len(c["point_labels"]) for c in chunks] == [3, 3, 1]
    assert all(c["image_embeddings"] is embedding for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c["point_coords"] for c in chunks]), coords)
    assert row_chunks(inputs, frozenset({"point_coords", "point_labels"}), 7) == [inputs]


def test_row_chunks_refuse_disagreeing_row_counts():
    with pytest.raises(InputSpecError, match="disagree"):
        row_chunks({"a": np.zeros(3), "b": np.zeros(4)}, frozenset({"a", "b"}), 2)


def _profiles():
    return sorted((ROOT / "export").glob("*.toml"))


@pytest.mark.parametrize("path", _profiles(), ids=lambda p: p.stem)
def test_build_profiles_tune_for_the_batches_infer_runs(path):
    # TensorRT tunes kernels for `opt`; infer's default batches must be what the plans are tuned for.
    from sammil_deploy.export.config import load_export_config
    from sammil_deploy.pipeline.infer import InferConfig
    from sammil_deploy.segment.config import SegmentConfig

    cfg = load_export_config(path)
    seg = SegmentConfig()
    crops_per_call = sum(4**layer for layer in range(seg.crop_n_layers + 1))  # full image + 4 per layer ...
    assert cfg.resnet_batch.opt == min(InferConfig().batch_size, cfg.resnet_batch.max)
    assert cfg.sam_decoder_prompts.opt == min(seg.points_per_batch, cfg.sam_decoder_prompts.max)
    assert cfg.sam_encoder_batch.opt == min(crops_per_call, cfg.sam_encoder_batch.max)
    assert cfg.gpu_class == path.stem


def test_device_cuda_without_a_gpu_is_one_line_and_names_the_fix():
    import torch

    from sammil_deploy.errors import ConfigError
    from sammil_deploy.runtime.devices import check_device

    check_device("cpu")
    check_device("auto")
    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        check_device("gpu0")
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA GPU\\(s\\)"):
            check_device(f"cuda:{torch.cuda.device_count()}")
        return
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA GPU is visible") as err:
            check_device(device)
        assert "\n" not in str(err.value)
        assert "--device cpu" in str(err.value)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA GPU is present")
def test_cli_extract_with_cuda_fails_before_reading_any_slide(monkeypatch, tmp_path, real_slide_path, capsys):
    import sys

    from sammil_deploy.cli import main

    out = tmp_path / "out"
    argv = ["sammil-deploy", "extract", str(real_slide_path), "--preset", "bwh_biopsy", "--allow-random-weights"]
    monkeypatch.setattr(sys, "argv", [*argv, "--device", "cuda", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --device 'cuda': no CUDA GPU is visible"), err
    assert not out.exists()  # no partial output


def test_bundle_built_for_gpu_is_refused_on_the_cpu_backends_with_the_fix(tmp_path):
    from sammil_deploy.bundle import BundleArtifact
    from sammil_deploy.errors import BackendError
    from sammil_deploy.pipeline.backends import refuse_gpu_only_part

    plan = BundleArtifact("resnet50", "tensorrt", "fp16", tmp_path / "resnet50_trunc.fp16.plan", "0" * 64)
    onnx = BundleArtifact("mil", "onnx", "fp32", tmp_path / "mil.fp32.onnx", "1" * 64)
    with pytest.raises(BackendError, match="built for a GPU.*TensorRT plan \\(fp16 resnet50_trunc.fp16.plan\\)") as err:
        refuse_gpu_only_part([plan, onnx], "resnet50", "onnxruntime")
    assert "--backend torch" in str(err.value)
    refuse_gpu_only_part([plan, onnx], "mil", "onnxruntime")  # has ONNX: the usual lookup decides
    refuse_gpu_only_part([onnx], "resnet50", "onnxruntime")  # nothing at all: the usual "bundle has no ..." error
