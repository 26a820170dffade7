"""Slide geometry and the read-only reader interface. All coordinates are level-0 (x, y) pixels."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sammil_deploy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SlideInfo:
    """Geometry and metadata of one slide.

    ``level_dimensions_wh[i]`` is (width, height) of level ``i``; ``level_downsamples[i]`` its factor to level 0.
    ``mpp`` is microns per level-0 pixel, ``None`` when the file does not say and the user gave none.
    """

    path: Path
    level_dimensions_wh: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    objective_power: float | None
    vendor: str
    mpp_source: str  # "metadata", "user" or "missing"

    @property
    def slide_id(self) -> str:
        """File name without its extension (CLAM's slide id)."""
        return self.path.stem

    @property
    def dimensions_wh(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions_wh[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_downsamples)

    def best_level_for_downsample(self, downsample: float) -> int:
        """Finest level whose downsample does not exceed ``downsample`` (OpenSlide's rule, with a small slack)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = level
        return best

    def level_for_mpp(self, target_mpp: float) -> int:
        """Finest level whose resolution is not finer than ``target_mpp`` allows (read there, then resize).

        Raises:
            ConfigError: If the slide has no mpp, or ``target_mpp`` is finer than level 0.
        """
        mpp = self.require_mpp()
        if target_mpp < mpp * 0.99:
            raise ConfigError(
                f"{self.path.name}: target {target_mpp} mpp is finer than the slide's base resolution "
                f"({mpp:.4f} mpp); choose target_mpp >= {mpp:.4f}"
            )
        return self.best_level_for_downsample(target_mpp / mpp)

    def level_for_magnification(self, magnification: float) -> int:
        """Level closest to (and not below) ``magnification`` x, from the objective power.

        Raises:
            ConfigError: If the slide does not record its objective power.
        """
        if self.objective_power is None:
            raise ConfigError(
                f"{self.path.name}: no objective power in the metadata; select levels by mpp instead "
                "(and pass --mpp if the slide has none)"
            )
        return self.best_level_for_downsample(self.objective_power / magnification)

    def require_mpp(self) -> float:
        """The mpp, or ConfigError telling the user to pass one."""
        if self.mpp is None:
            raise ConfigError(
                f"{self.path.name}: the slide has no microns-per-pixel metadata; pass --mpp (e.g. --mpp 0.25 for "
                "a 40x scan, 0.5 for 20x)"
            )
        return self.mpp


class SlideReader(abc.ABC):
    """Read-only access to one slide. All coordinates are level-0 (x, y) pixels.

    ``name`` says which implementation reads the pixels (recorded in feature-file provenance).
    """

    name: str = "unknown"

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    @abc.abstractmethod
    def info(self) -> SlideInfo:
        """Geometry and metadata."""

    @abc.abstractmethod
    def read_region(self, xy_level0: tuple[int, int], level: int, size_px: tuple[int, int]) -> np.ndarray:
        """Return an (H, W, 3) uint8 RGB array of ``size_px`` = (W, H) pixels at ``level``.

        Pixels outside the slide or transparent in the file are white.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file handle (idempotent)."""

    def read_level(self, level: int) -> np.ndarray:
        """Whole level as an (H, W, 3) uint8 array; meant for low-resolution levels only."""
        w, h = self.info.level_dimensions_wh[level]
        return self.read_region((0, 0), level, (w, h))

    def thumbnail(self, max_size_px: int) -> np.ndarray:
        """RGB thumbnail whose long side is at most ``max_size_px``, read from the best level and resized."""
        from PIL import Image

        w0, h0 = self.info.dimensions_wh
        downsample = max(w0, h0) / max_size_px
        level = self.info.best_level_for_downsample(max(downsample, 1.0))
        image = self.read_level(level)
        scale = max_size_px / max(image.shape[:2])
        if scale < 1.0:
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        return image


def downsample_for_long_side(long_side_px: int, target_px: int = 1024) -> int:
    """SAM-MIL's power-of-two downsample D = 2^ceil(log2(long / target)), at least 1."""
    if long_side_px <= target_px:
        return 1
    return 2 ** math.ceil(math.log2(long_side_px / target_px))
