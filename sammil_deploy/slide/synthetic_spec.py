"""What a synthetic slide shows (:mod:`.synthetic` writes it, :mod:`.synthetic_model` draws it)."""

from __future__ import annotations

from dataclasses import dataclass

from sammil_deploy.errors import ConfigError

MAX_COARSEST_LONG_SIDE_PX = 1024  # levels are added until the long side is at most this


@dataclass(frozen=True, slots=True)
class SyntheticSlideSpec:
    """What to draw. Every pixel is a deterministic function of these fields.

    Attributes:
        width_px, height_px: Level-0 size.
        mpp: Microns per level-0 pixel (0.25 ~ 40x, 0.5 ~ 20x); sizes of nuclei and lumens follow it.
        tile_px: TIFF tile side (256 or 512).
        jpeg_quality: JPEG quality 1..100.
        seed: Seed of the layout, the nuclei and the noise.
        n_tissue_pieces: Tissue fragments (0 gives a blank slide).
        n_lumens: Round holes punched in the tissue.
        tumour: Whether to add tumour foci (dense, large, dark nuclei on purple cytoplasm) inside tissue.
        tumour_radius_um: Radius of each tumour focus in microns.
        n_tumour_foci: Number of tumour foci.
        level_downsample: Factor between successive levels (2 or 4).
        background_rgb: Glass colour.
        noise_std: Std of the per-pixel scanner noise, in grey levels.
        vendor: ``"aperio"`` (Aperio-style header: mpp and objective power) or ``"generic"`` (resolution tags).
    """

    width_px: int = 6144
    height_px: int = 4608
    mpp: float = 0.25
    tile_px: int = 512
    jpeg_quality: int = 80
    seed: int = 0
    n_tissue_pieces: int = 2
    n_lumens: int = 6
    tumour: bool = False
    tumour_radius_um: float = 300.0
    n_tumour_foci: int = 1
    level_downsample: int = 4
    background_rgb: tuple[int, int, int] = (244, 243, 246)
    noise_std: float = 2.0
    vendor: str = "aperio"

    def __post_init__(self) -> None:
        if not (16 <= self.width_px <= 2**20 and 16 <= self.height_px <= 2**20):
            raise ConfigError(f"synthetic slide size must be 16..{2**20} px, got {self.width_px}x{self.height_px}")
        if not 0.01 <= self.mpp <= 100:
            raise ConfigError(f"synthetic slide mpp must be in [0.01, 100], got {self.mpp}")
        if self.tile_px not in (256, 512):
            raise ConfigError(f"synthetic slide tile_px must be 256 or 512, got {self.tile_px}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"synthetic slide jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if not 0 <= self.n_tissue_pieces <= 16 or self.n_lumens < 0 or self.n_tumour_foci < 1:
            raise ConfigError(
                "synthetic slide needs 0..16 tissue pieces, >= 0 lumens and >= 1 tumour focus, got "
                f"{self.n_tissue_pieces}, {self.n_lumens}, {self.n_tumour_foci}"
            )
        if self.tumour and self.n_tissue_pieces == 0:
            raise ConfigError("synthetic slide: tumour=True needs n_tissue_pieces >= 1 (tumour lies inside tissue)")
        if self.tumour_radius_um <= 0:
            raise ConfigError(f"synthetic slide tumour_radius_um must be > 0, got {self.tumour_radius_um}")
        if self.level_downsample not in (2, 4):
            raise ConfigError(f"synthetic slide level_downsample must be 2 or 4, got {self.level_downsample}")
        if len(self.background_rgb) != 3 or not all(0 <= c <= 255 for c in self.background_rgb):
            raise ConfigError(f"synthetic slide background_rgb must be 3 values in 0..255, got {self.background_rgb}")
        if not 0 <= self.noise_std <= 64:
            raise ConfigError(f"synthetic slide noise_std must be in [0, 64], got {self.noise_std}")
        if self.vendor not in ("aperio", "generic"):
            raise ConfigError(f"synthetic slide vendor must be 'aperio' or 'generic', got {self.vendor!r}")

    @property
    def level_downsamples(self) -> tuple[int, ...]:
        """Integer downsample of each level: 1, f, f^2, ... until the long side is <= 1024 px."""
        downsamples = [1]
        while max(self.width_px, self.height_px) // downsamples[-1] > MAX_COARSEST_LONG_SIDE_PX:
            downsamples.append(downsamples[-1] * self.level_downsample)
        return tuple(downsamples)

    @property
    def level_dimensions_wh(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each level: level-0 size floor-divided by the downsample (at least 1 px)."""
        return tuple((max(1, self.width_px // d), max(1, self.height_px // d)) for d in self.level_downsamples)
