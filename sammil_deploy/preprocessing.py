"""The preprocessing recipe: what ``extract`` does to a slide, recorded by a bundle so ``infer`` does the same.

It sits below both ``pipeline`` and ``bundle`` so that each can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sammil_deploy.errors import ConfigError
from sammil_deploy.features.encoding import EncoderConfig
from sammil_deploy.patching import PatchConfig
from sammil_deploy.segment import SegmentConfig
from sammil_deploy.tissue import TissueConfig

__all__ = ["SlideExtractConfig"]


@dataclass(frozen=True, slots=True)
class SlideExtractConfig:
    """Everything ``extract`` does to one slide.

    Attributes:
        tissue: Tissue segmentation (CLAM defaults).
        patch: Patch grid (SAM-MIL: 512 px at level 0).
        segment: Segmenter (SAM with a checkpoint, or the fallback) and patch→mask membership.
        features: Encoder, weights, batching, device and precision.
        mpp: Microns per level-0 pixel to use instead of the slide's metadata (or when it has none).
        save_segmentation: Also write ``segments/<id>.npz`` (SAM image + masks).
    """

    tissue: TissueConfig = field(default_factory=TissueConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    features: EncoderConfig = field(default_factory=EncoderConfig)
    mpp: float | None = None
    save_segmentation: bool = True

    def __post_init__(self) -> None:
        if self.mpp is not None and self.mpp <= 0:
            raise ConfigError(f"mpp must be > 0, got {self.mpp}")
