"""Patch-grid parameters (CLAM's ``patch_params`` plus an optional target resolution)."""

from __future__ import annotations

from dataclasses import dataclass

from sammil_deploy.errors import ConfigError

CONTOUR_FNS = ("four_pt", "four_pt_hard", "center", "basic")


@dataclass(frozen=True, slots=True)
class PatchConfig:
    """Where patches go and how large they are.

    Attributes:
        patch_size_px: Patch side in pixels at ``patch_level`` (CLAM's ``patch_size``), or at ``target_mpp``
            when that is set. SAM-MIL uses 512 at level 0.
        step_px: Grid step in the same pixels; ``None`` means ``patch_size_px`` (non-overlapping).
        patch_level: Pyramid level the patch size refers to (CLAM's ``patch_level``).
        target_mpp: If set, the patch covers ``patch_size_px`` pixels at this resolution: its level-0 side is
            ``round(patch_size_px · target_mpp / slide_mpp)``. Needs the slide's mpp; excludes ``patch_level``.
        contour_fn: CLAM contour check: ``four_pt`` (any of 4 points at centre ± side/4 inside the contour),
            ``four_pt_hard`` (all 4), ``center`` (the centre), ``basic`` (the top-left corner).
        use_padding: Let patches extend past the slide border (CLAM default True; reads pad with white).
    """

    patch_size_px: int = 512
    step_px: int | None = None
    patch_level: int = 0
    target_mpp: float | None = None
    contour_fn: str = "four_pt"
    use_padding: bool = True

    def __post_init__(self) -> None:
        if self.patch_size_px <= 0:
            raise ConfigError(f"patch.patch_size_px must be > 0, got {self.patch_size_px}")
        if self.step_px is not None and self.step_px <= 0:
            raise ConfigError(f"patch.step_px must be > 0 (or unset for step = patch size), got {self.step_px}")
        if self.patch_level < 0:
            raise ConfigError(f"patch.patch_level must be >= 0, got {self.patch_level}")
        if self.target_mpp is not None and self.target_mpp <= 0:
            raise ConfigError(f"patch.target_mpp must be > 0, got {self.target_mpp}")
        if self.target_mpp is not None and self.patch_level != 0:
            raise ConfigError(
                f"patch.target_mpp ({self.target_mpp}) and patch.patch_level ({self.patch_level}) both set the patch "
                "resolution; give only one"
            )
        if self.contour_fn not in CONTOUR_FNS:
            raise ConfigError(f"patch.contour_fn must be one of {list(CONTOUR_FNS)}, got {self.contour_fn!r}")

    @property
    def effective_step_px(self) -> int:
        """Grid step in pixels at the patch resolution."""
        return self.patch_size_px if self.step_px is None else self.step_px
