"""``extract``'s encoder settings; the encoding loop is ``features.engine``'s (shared).

The backend that runs the encoder (``pipeline.feature_backend``) is the PyTorch module, an ONNX Runtime session
on an exported ONNX file, or a TensorRT plan, all behind the same ``patches (B, S, S, 3) uint8 -> features
(B, D)`` contract (normalisation inside the model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sammil_deploy.errors import ConfigError
from sammil_deploy.features.encoders import PatchEncoder, available_encoders, create_encoder
from sammil_deploy.features.preprocess_ops import INTERPOLATIONS
from sammil_deploy.runtime.factory import BACKEND_KINDS

if TYPE_CHECKING:
    from sammil_deploy.runtime import Backend

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
FEATURE_BACKENDS = ("auto", *BACKEND_KINDS)  # auto: decided by resolve_backend_kind
READERS = ("auto", "openslide", "tiled")

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """Feature-extraction settings.

    Attributes:
        encoder: Registry name (see :func:`sammil_deploy.features.encoders.available_encoders`).
        weights: Local weights file (``.pth``/``.safetensors``) for the encoder.
        allow_random: Use random weights when no weights are given (demos/tests; features are meaningless).
        download: Download the reference weights into the torch hub cache (needs a connection).
        batch_size: Patches per forward pass.
        num_workers: Reader processes (0 reads in the calling process).
        device: ``"auto"`` (CUDA when visible), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, or autocast ``"bf16"`` / ``"fp16"`` (fp16 needs CUDA).
        interpolation: Resize filter ``"bicubic"`` (SAM-MIL) or ``"bilinear"`` (CLAM); ``None`` = the encoder's.
        backend: Runtime of the encoder: ``torch``, ``onnxruntime`` (the encoder exported to ONNX once per
            weights file and cached, or ``model_file``), ``tensorrt`` (a plan in ``model_file``, on CUDA), or
            ``auto``: ONNX Runtime on the CPU when installed (fp32, weights from a file), else PyTorch.
        model_file: An exported encoder (``sammil-deploy export``: ``resnet50*.onnx`` or a TensorRT ``.plan``)
            to run instead of exporting ``weights``; it must have been exported from the same weights.
        intra_op_threads: ONNX Runtime CPU threads (0: its default, all cores).
        reader: Slide reader: ``auto`` (tile-aligned JPEG decoding where the file allows, else OpenSlide),
            ``openslide`` or ``tiled``.
        resize: Where patches are resized to the encoder input: ``host`` (PIL, antialiased, in the reader
            workers), ``device`` (antialiased ``torch`` interpolation of the batch) or ``auto`` (device on CUDA).
    """

    encoder: str = "resnet50_trunc"
    weights: Path | None = None
    allow_random: bool = False
    download: bool = False
    batch_size: int = 64
    num_workers: int = 2
    device: str = "auto"
    precision: str = "fp32"
    interpolation: str | None = None
    backend: str = "auto"
    model_file: Path | None = None
    intra_op_threads: int = 0
    reader: str = "auto"
    resize: str = "auto"

    def __post_init__(self) -> None:
        for name in ("weights", "model_file"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.backend not in FEATURE_BACKENDS:
            raise ConfigError(f"features.backend must be one of {FEATURE_BACKENDS}, got {self.backend!r}")
        if self.reader not in READERS:
            raise ConfigError(f"features.reader must be one of {READERS}, got {self.reader!r}")
        if self.backend == "tensorrt" and self.model_file is None:
            raise ConfigError("features.backend tensorrt needs a plan: pass --model-file resnet50.plan")
        if self.resize not in ("auto", "host", "device"):
            raise ConfigError(f"features.resize must be auto, host or device, got {self.resize!r}")
        if self.intra_op_threads < 0:
            raise ConfigError(f"features.intra_op_threads must be >= 0, got {self.intra_op_threads}")
        if self.encoder not in available_encoders():
            raise ConfigError(f"features.encoder {self.encoder!r} unknown; choose from {available_encoders()}")
        if self.batch_size < 1:
            raise ConfigError(f"features.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"features.num_workers must be >= 0, got {self.num_workers}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"features.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"features.interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"features.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        sources = [
            n
            for n, on in (
                ("weights", self.weights is not None),
                ("download", self.download),
                ("allow_random", self.allow_random),
            )
            if on
        ]
        if len(sources) > 1:
            raise ConfigError(f"features: choose one weights source, got {' + '.join(sources)}")


def build_encoder(cfg: EncoderConfig) -> PatchEncoder:
    """The encoder ``cfg`` names, with its weights (see :func:`create_encoder` for the errors)."""
    return create_encoder(cfg.encoder, weights=cfg.weights, allow_random=cfg.allow_random, download=cfg.download)


def cache_root() -> Path:
    """``$SAMMIL_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/sammil-deploy``."""
    import os

    if os.environ.get("SAMMIL_DEPLOY_CACHE"):
        return Path(os.environ["SAMMIL_DEPLOY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sammil-deploy"


def extract_features(
    slide_path: Path | str,
    coords_level0_xy: np.ndarray,
    patch_size_level0_px: int,
    backend: Backend,
    cfg: EncoderConfig,
    *,
    input_size_px: int,
    interpolation: str,
    patch_level: int = 0,
    read_size_px: int | None = None,
    progress: ProgressFn | None = None,
    mpp: float | None = None,
) -> np.ndarray:
    """Encode every patch of one slide with ``backend`` (``pipeline.feature_backend``) via the shared engine.

    Args:
        slide_path: Slide file.
        coords_level0_xy: (N, 2) int top-left corners in level-0 pixels.
        patch_size_level0_px: Patch side in level-0 pixels (512 in SAM-MIL).
        backend: A loaded feature backend.
        cfg: Batch size, workers, reader.
        input_size_px: Encoder input side S.
        interpolation: Resize filter.
        patch_level: Level the patches are read at.
        read_size_px: Patch side read at ``patch_level`` (default: level-0 size / level downsample).
        progress: Called as ``progress(done, total)`` after each batch.
        mpp: Optional mpp override for slides without metadata.

    Returns:
        (N, D) float32 features in the order of ``coords_level0_xy``.
    """
    from sammil_deploy.features.engine import encode_patches

    if read_size_px is None:
        from sammil_deploy.slide import open_slide

        with open_slide(slide_path, reader="openslide", mpp=mpp) as reader:
            downsample = reader.info.level_downsamples[patch_level]
        read_size_px = max(1, round(patch_size_level0_px / downsample))
    return encode_patches(
        slide_path, coords_level0_xy, backend, patch_level=patch_level, read_size_px=read_size_px,
        input_size_px=input_size_px, interpolation=interpolation, batch_size=cfg.batch_size,
        num_workers=cfg.num_workers, reader=cfg.reader, resize=cfg.resize, mpp=mpp, progress=progress,
    )  # fmt: skip
