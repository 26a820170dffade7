"""Tissue-segmentation parameters: CLAM's ``create_patches_fp.py`` defaults and its presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sammil_deploy.errors import ConfigError

# CLAM preset csvs (SAM-MIL ships the same ones); only the fields this toolkit uses.
TISSUE_PRESETS: dict[str, dict[str, Any]] = {
    "bwh_biopsy": {"sthresh": 15, "mthresh": 11, "close": 2, "a_t": 1.0, "a_h": 1.0, "max_n_holes": 2},
    "tcga": {"sthresh": 8, "mthresh": 7, "close": 4, "a_t": 16.0, "a_h": 4.0, "max_n_holes": 8},
    "bwh_resection": {"sthresh": 15, "mthresh": 11, "close": 4, "a_t": 100.0, "a_h": 16.0, "max_n_holes": 8},
}


@dataclass(frozen=True, slots=True)
class TissueConfig:
    """CLAM-style tissue segmentation on one low-resolution level.

    Attributes:
        seg_level: Pyramid level to segment; -1 picks the level best for ``seg_downsample`` (CLAM: 64).
        seg_downsample: Target downsample used when ``seg_level`` is -1.
        sthresh: Saturation threshold (0-255) after the median blur; ignored with ``use_otsu``.
        sthresh_up: Value written for foreground pixels by the threshold.
        mthresh: Median-blur kernel size in seg-level pixels (odd).
        close: Morphological closing kernel size in seg-level pixels (0 disables it).
        use_otsu: Pick the threshold with Otsu's method instead of ``sthresh``.
        a_t: Minimum tissue area (holes subtracted) of a kept contour, in reference patches.
        a_h: Minimum area of a kept hole, in reference patches.
        max_n_holes: Largest number of holes kept per contour (the largest ones).
        ref_patch_size_px: Side of the reference patch in level-0 pixels (CLAM: 512); ``a_t`` and ``a_h`` are
            multiples of its area, ``int(ref² / (ds_x·ds_y))`` seg-level pixels.
        max_seg_pixels: Refuse to segment a level with more pixels than this (CLAM aborts above 1e8).
    """

    seg_level: int = -1
    seg_downsample: float = 64.0
    sthresh: int = 8
    sthresh_up: int = 255
    mthresh: int = 7
    close: int = 4
    use_otsu: bool = False
    a_t: float = 100.0
    a_h: float = 16.0
    max_n_holes: int = 8
    ref_patch_size_px: int = 512
    max_seg_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        if self.seg_level < -1:
            raise ConfigError(f"tissue.seg_level must be -1 (auto) or a level index >= 0, got {self.seg_level}")
        if self.seg_downsample < 1:
            raise ConfigError(f"tissue.seg_downsample must be >= 1, got {self.seg_downsample}")
        for name in ("sthresh", "sthresh_up"):
            value = getattr(self, name)
            if not 0 <= value <= 255:
                raise ConfigError(f"tissue.{name} must be in [0, 255], got {value}")
        if self.mthresh < 1 or self.mthresh % 2 == 0:
            raise ConfigError(f"tissue.mthresh (median kernel) must be an odd number >= 1, got {self.mthresh}")
        if self.close < 0:
            raise ConfigError(f"tissue.close must be >= 0 (0 disables closing), got {self.close}")
        if self.a_t < 0 or self.a_h < 0:
            raise ConfigError(f"tissue.a_t and tissue.a_h must be >= 0, got a_t={self.a_t}, a_h={self.a_h}")
        if self.max_n_holes < 0:
            raise ConfigError(f"tissue.max_n_holes must be >= 0, got {self.max_n_holes}")
        if self.ref_patch_size_px <= 0:
            raise ConfigError(f"tissue.ref_patch_size_px must be > 0, got {self.ref_patch_size_px}")
        if self.max_seg_pixels <= 0:
            raise ConfigError(f"tissue.max_seg_pixels must be > 0, got {self.max_seg_pixels}")


def tissue_preset(name: str) -> dict[str, Any]:
    """The field values of a CLAM preset (``bwh_biopsy``, ``tcga``, ``bwh_resection``), as a new dict.

    Raises:
        ConfigError: For an unknown preset name.
    """
    try:
        return dict(TISSUE_PRESETS[name])
    except KeyError:
        raise ConfigError(f"unknown tissue preset {name!r}; choose from {sorted(TISSUE_PRESETS)}") from None


def with_tissue_preset(data: dict[str, Any], preset: str | None) -> dict[str, Any]:
    """A config mapping with a CLAM preset under its own ``tissue`` values (a ``load_config`` ``prepare`` step).

    The mapping's top-level ``preset`` key names the preset; ``preset`` (the ``--preset`` flag) wins over it.

    Raises:
        ConfigError: Unknown preset, or ``tissue`` is not a table.
    """
    name = preset or data.pop("preset", None)
    data.pop("preset", None)
    if name is None:
        return data
    tissue = data.get("tissue", {})
    if not isinstance(tissue, dict):
        raise ConfigError("'tissue' must be a table")
    data["tissue"] = {**tissue_preset(str(name)), **tissue}
    return data
