"""Batched patch-feature extraction: reader workers → pinned uint8 batches → device normalise → encoder."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sammil_deploy.errors import ConfigError
from sammil_deploy.features.encoders import PatchEncoder, available_encoders, create_encoder
from sammil_deploy.features.preprocess_ops import INTERPOLATIONS, PatchTransform, normalize_batch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ExtractConfig:
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

    def __post_init__(self) -> None:
        if isinstance(self.weights, str):
            object.__setattr__(self, "weights", Path(self.weights))
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


def build_encoder(cfg: ExtractConfig) -> PatchEncoder:
    """The encoder ``cfg`` names, with its weights (see :func:`create_encoder` for the errors)."""
    return create_encoder(cfg.encoder, weights=cfg.weights, allow_random=cfg.allow_random, download=cfg.download)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when visible, else CPU.

    Raises:
        ConfigError: If CUDA is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; use --device cpu or auto")
    return device


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16``/``fp16`` (a no-op context for ``fp32``).

    Raises:
        ConfigError: fp16 on the CPU (use bf16 or fp32).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use --precision bf16 or fp32 on the CPU")
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def prepare_encoder(encoder: PatchEncoder, device: torch.device) -> PatchEncoder:
    """Move ``encoder`` (in place) to ``device`` in eval mode; channels-last on CUDA (faster convolutions)."""
    encoder = encoder.eval().to(device)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    return encoder


def encode_batch(
    encoder: PatchEncoder, batch_uint8: torch.Tensor, device: torch.device, precision: str = "fp32"
) -> torch.Tensor:
    """``(B, 3, S, S)`` uint8 (any device) → ``(B, D)`` float32 features on ``device``, without autograd."""
    x = batch_uint8.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_context(device, precision):
        x = normalize_batch(x, encoder.mean, encoder.std)
        return encoder(x).float()


def extract_features(
    slide_path: Path | str,
    coords_level0_xy: np.ndarray,
    patch_size_level0_px: int,
    encoder: PatchEncoder,
    cfg: ExtractConfig,
    *,
    patch_level: int = 0,
    read_size_px: int | None = None,
    progress: ProgressFn | None = None,
    mpp: float | None = None,
) -> np.ndarray:
    """Encode every patch of one slide.

    Args:
        slide_path: Slide file (opened once per reader process).
        coords_level0_xy: (N, 2) int top-left corners in level-0 pixels.
        patch_size_level0_px: Patch side in level-0 pixels (512 in SAM-MIL), resized to the encoder's input.
        encoder: From :func:`build_encoder`; moved to the configured device in place.
        cfg: Batch size, workers, device, precision and resize filter.
        patch_level: Level the patches are read at.
        read_size_px: Patch side read at ``patch_level`` (default: level-0 size / level downsample).
        progress: Called as ``progress(done, total)`` after each batch.
        mpp: Optional mpp override for slides without metadata.

    Returns:
        (N, D) float32 features in the order of ``coords_level0_xy``.

    Raises:
        ConfigError: Unavailable device or precision.
        SlideError: If a patch cannot be read.
    """
    from sammil_deploy.patching.dataset import PatchDataset, make_patch_loader

    coords = np.asarray(coords_level0_xy)
    device = resolve_device(cfg.device)
    autocast_context(device, cfg.precision)  # validate before any worker starts
    out = np.empty((coords.shape[0], encoder.dim), np.float32)
    if coords.shape[0] == 0:
        return out
    transform = PatchTransform(encoder.input_size_px, cfg.interpolation or encoder.interpolation)
    dataset = PatchDataset(
        slide_path, coords, patch_size_level0_px, patch_level, transform, read_size_px=read_size_px, mpp=mpp
    )
    encoder = prepare_encoder(encoder, device)
    # One pass per slide: workers exit with the iterator instead of idling until garbage collection.
    loader = make_patch_loader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent=False,
    )
    done = 0
    try:
        for batch, rows in loader:
            feats = encode_batch(encoder, batch, device, cfg.precision)
            out[rows.numpy()] = feats.cpu().numpy()
            done += len(rows)
            if progress is not None:
                progress(done, len(out))
    finally:
        dataset.close()
    log.debug("%s: %d patches encoded on %s (%s)", Path(slide_path).name, len(out), device, cfg.precision)
    return out
