"""Patch grids inside tissue (CLAM-compatible) and the patch-coordinate HDF5 file."""

from sammil_deploy.patching.config import CONTOUR_FNS, PatchConfig
from sammil_deploy.patching.coords_file import COORDS_SCHEMA_VERSION, CoordsFile, read_coords_h5, write_coords_h5
from sammil_deploy.patching.grid import PatchGrid, make_patch_grid, require_patch_fits

__all__ = [
    "CONTOUR_FNS",
    "COORDS_SCHEMA_VERSION",
    "CoordsFile",
    "PatchConfig",
    "PatchGrid",
    "make_patch_grid",
    "read_coords_h5",
    "require_patch_fits",
    "write_coords_h5",
]
