"""CLAM-style tissue detection: contours and holes in level-0 coordinates."""

from sammil_deploy.tissue.config import TISSUE_PRESETS, TissueConfig, tissue_preset, with_tissue_preset
from sammil_deploy.tissue.detect import TissueResult, detect_tissue, select_seg_level
from sammil_deploy.tissue.geometry import point_polygon_test

__all__ = [
    "TISSUE_PRESETS",
    "TissueConfig",
    "TissueResult",
    "detect_tissue",
    "point_polygon_test",
    "select_seg_level",
    "tissue_preset",
    "with_tissue_preset",
]
