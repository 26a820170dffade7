"""The feature backend of ``extract`` and ``infer``: the encoder on PyTorch, ONNX Runtime or TensorRT.

All run behind the same ``patches (B, S, S, 3) uint8 -> features (B, D)`` contract (normalisation inside the
model); ONNX Runtime on the CPU uses the encoder exported once per weights (``export.encoder_cache``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sammil_deploy.errors import ConfigError
from sammil_deploy.export.encoder_cache import cached_encoder_onnx, encoder_cache_dir
from sammil_deploy.features.encoding import EncoderConfig

if TYPE_CHECKING:
    from sammil_deploy.features.encoders import PatchEncoder
    from sammil_deploy.runtime import Backend


def resolve_backend_kind(cfg: EncoderConfig, encoder: PatchEncoder, device: torch.device) -> str:
    """``cfg.backend`` with ``auto`` decided.

    ``auto``: the kind of ``model_file`` when given; else ONNX Runtime on the CPU (1.5-2x PyTorch there) when it
    is installed, the precision is fp32 and the weights come from a file (random weights: PyTorch, no export).
    """
    if cfg.backend != "auto":
        return cfg.backend
    if cfg.model_file is not None:
        return "tensorrt" if cfg.model_file.suffix in (".plan", ".engine") else "onnxruntime"
    import importlib.util

    exportable = encoder.weights_sha256 != "random" and cfg.precision == "fp32"
    if device.type == "cpu" and exportable and importlib.util.find_spec("onnxruntime") is not None:
        return "onnxruntime"
    return "torch"


def open_feature_backend(encoder: PatchEncoder, cfg: EncoderConfig, *, cache_dir: Path | None = None) -> Backend:
    """The encoder behind the exported-model contract on ``cfg``'s backend and device, loaded.

    Args:
        encoder: From :func:`build_encoder` (PyTorch weights; exported to ONNX when ONNX Runtime needs it).
        cfg: Backend, model file, device, precision, threads.
        cache_dir: Where exported encoders are kept (default :func:`encoder_cache_dir`).

    Raises:
        ConfigError: Unavailable device or precision, or a backend that cannot run here.
        BackendError, MissingDependencyError: The runtime or the model file cannot be loaded.
    """
    from sammil_deploy.export.resnet import resnet_spec
    from sammil_deploy.features.encoders import NormalizedEncoder
    from sammil_deploy.runtime import open_backend
    from sammil_deploy.runtime.devices import ort_device_options, resolve_device

    device = torch.device(resolve_device(cfg.device))
    kind = resolve_backend_kind(cfg, encoder, device)
    if kind == "torch":
        module = NormalizedEncoder(encoder).eval()
        if device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)  # the NHWC input is channels-last already
        spec = resnet_spec(encoder)
        name = f"{encoder.name} ({encoder.meta.weights_source})"
        return open_backend("torch", module, input_spec=spec.inputs, output_spec=spec.outputs, device=str(device),
                            precision=cfg.precision, name=name)  # fmt: skip
    if kind == "tensorrt":
        if device.type != "cuda":
            raise ConfigError("features.backend tensorrt needs a CUDA device; use onnxruntime or torch on the CPU")
        return open_backend("tensorrt", cfg.model_file, device=str(device))
    if cfg.model_file is None and cfg.precision != "fp32":
        raise ConfigError(
            f"precision {cfg.precision} with onnxruntime needs an exported model: run `sammil-deploy export "
            f"--precision {cfg.precision}` and pass --model-file, or use --backend torch"
        )
    path = cfg.model_file or cached_encoder_onnx(encoder, cache_dir or encoder_cache_dir())
    return open_backend("onnxruntime", path, **ort_device_options(str(device)), intra_op_threads=cfg.intra_op_threads)
