"""Patch → encoder input: PIL resize in the reader workers, scaling and normalisation on the device.

Splitting the transform this way keeps what crosses process boundaries and the host→device copy in uint8
(4x smaller than float32) and batches the arithmetic. The result equals torchvision's
``Compose([Resize((S, S), filter), ToTensor(), Normalize(mean, std)])`` on a PIL image (SAM-MIL's preprocessing
with ``bicubic``; CLAM's with ``bilinear``, which PIL antialiases when shrinking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sammil_deploy.errors import ConfigError

INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True, slots=True)
class PatchTransform:
    """RGB patch ``(H, W, 3)`` uint8 → ``(3, S, S)`` uint8 tensor, resized with PIL (antialiased).

    With ``channels_last`` the tensor is ``(S, S, 3)``: what the exported encoder takes, so batches need no
    transpose copy (which would also move a pinned batch into pageable memory). Picklable (plain fields only),
    so DataLoader workers can carry it.
    """

    size_px: int = 224
    interpolation: str = "bicubic"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.size_px <= 0:
            raise ConfigError(f"patch transform size_px must be > 0, got {self.size_px}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """Resize one patch; returns a contiguous ``(3, S, S)`` (or ``(S, S, 3)``) uint8 tensor."""
        from PIL import Image

        if rgb.shape[:2] != (self.size_px, self.size_px):
            resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
            rgb = np.asarray(Image.fromarray(rgb).resize((self.size_px, self.size_px), resample))
        if self.channels_last:
            return torch.from_numpy(np.require(rgb, requirements=("C", "W")))  # PIL's array view is read-only
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def normalize_batch(
    batch_uint8: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """``(B, 3, S, S)`` uint8 → float32 ``(x / 255 - mean) / std`` on the batch's device (ToTensor + Normalize)."""
    if batch_uint8.dtype != torch.uint8 or batch_uint8.ndim != 4 or batch_uint8.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, S, S) uint8 batch, got {tuple(batch_uint8.shape)} {batch_uint8.dtype}")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=batch_uint8.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=batch_uint8.device).view(1, 3, 1, 1)
    return (batch_uint8.float().div_(255.0) - mean_t).div_(std_t)
