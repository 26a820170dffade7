"""Patch-coordinate HDF5 (CLAM ``patches/<slide>.h5`` layout plus our versioned attrs), written atomically."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sammil_deploy import __version__
from sammil_deploy.config import to_dict
from sammil_deploy.errors import FeatureStoreError
from sammil_deploy.io_atomic import atomic_h5
from sammil_deploy.patching.grid import PatchGrid
from sammil_deploy.slide import SlideInfo

COORDS_SCHEMA_VERSION = 1
_CHUNK_ROWS = 32  # CLAM's chunking


@dataclass(frozen=True, slots=True)
class CoordsFile:
    """Contents of a patch-coordinate file.

    Attributes:
        path: The file read.
        grid: Patch positions and sizes; for plain CLAM files ``patch_size_level0_px`` is
            ``patch_size × int(downsample)`` and ``step_level0_px`` equals it (CLAM does not store the step).
        name: Slide id (CLAM's ``name`` attr; the file stem when absent).
        schema_version: Our schema version, ``None`` for a file written by CLAM or SAM-MIL.
        attrs: All file attributes, JSON strings decoded where they hold configs.
    """

    path: Path
    grid: PatchGrid
    name: str
    schema_version: int | None
    attrs: dict[str, Any] = field(default_factory=dict)


def write_coords_h5(
    path: Path,
    grid: PatchGrid,
    info: SlideInfo,
    configs: Mapping[str, Any] | None = None,
    *,
    extra_attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``coords`` and attrs to ``path`` via ``path.partial`` + rename (no half-written file ever visible).

    Args:
        path: Destination ``.h5``; its folder must exist.
        grid: Patch grid (at least one patch).
        info: Slide the grid belongs to.
        configs: Config dataclasses (or plain dicts) by name, stored as ``<name>_config`` JSON attrs.
        extra_attrs: Scalar provenance stored as root attrs (e.g. tissue area, seg level).

    Returns:
        ``path``.
    """
    path = Path(path)
    coords = np.ascontiguousarray(grid.coords_level0_xy, dtype=np.int64).reshape(-1, 2)
    level_wh = info.level_dimensions_wh[grid.patch_level]
    with atomic_h5(path) as f:
        dset = f.create_dataset(
            "coords", data=coords, maxshape=(None, 2), chunks=(max(1, min(_CHUNK_ROWS, len(coords))), 2)
        )
        dset.attrs.update(
            patch_size=int(grid.read_size_px),
            patch_level=int(grid.patch_level),
            downsample=np.array([grid.patch_downsample, info.dimensions_wh[1] / level_wh[1]], np.float64),
            downsampled_level_dim=np.array(level_wh, np.int64),
            level_dim=np.array(level_wh, np.int64),
            name=info.slide_id,
            save_path=str(path),
        )
        f.attrs.update(
            schema_version=COORDS_SCHEMA_VERSION,
            toolkit_version=__version__,
            slide_path=str(info.path),
            slide_width_px=int(info.dimensions_wh[0]),
            slide_height_px=int(info.dimensions_wh[1]),
            mpp=float("nan") if info.mpp is None else float(info.mpp),
            mpp_source=info.mpp_source,
            patch_size_level0_px=int(grid.patch_size_level0_px),
            step_level0_px=int(grid.step_level0_px),
            output_size_px=int(grid.output_size_px),
            target_mpp=float("nan") if grid.target_mpp is None else float(grid.target_mpp),
            n_patches=len(coords),
        )
        for key, value in (configs or {}).items():
            plain = dict(value) if isinstance(value, Mapping) else to_dict(value)
            f.attrs[f"{key}_config"] = json.dumps(plain, sort_keys=True, default=str)
        f.attrs.update(dict(extra_attrs or {}))
    return path


def read_coords_h5(path: Path) -> CoordsFile:
    """Read and validate a coords file written by this toolkit, CLAM or SAM-MIL.

    CLAM keeps ``patch_size``/``patch_level`` on the ``coords`` dataset; they are looked up there, then on the
    file. Returns ``grid.target_mpp`` as ``None`` for level-based files.

    Raises:
        FeatureStoreError: If the file is missing, not HDF5, or ``coords``/its attrs are absent or malformed.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FeatureStoreError(f"{path}: no such coords file; run `sammil-deploy preprocess` first")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise FeatureStoreError(f"{path}: not a readable HDF5 file ({err}); re-run preprocess") from None
    with f:
        if "coords" not in f:
            raise FeatureStoreError(f"{path}: no 'coords' dataset; is this a CLAM/sammil-deploy patch file?")
        dset = f["coords"]
        if dset.ndim != 2 or dset.shape[1] != 2 or not np.issubdtype(dset.dtype, np.integer):
            raise FeatureStoreError(
                f"{path}: 'coords' must be an (N, 2) integer array of level-0 x,y, got {dset.shape} {dset.dtype}"
            )
        coords = dset[()].astype(np.int64)
        attrs = {**_plain(dict(f.attrs)), **_plain(dict(dset.attrs))}
    missing = [k for k in ("patch_size", "patch_level") if k not in attrs]
    if missing:
        raise FeatureStoreError(f"{path}: 'coords' lacks attrs {missing}; re-create it with `sammil-deploy preprocess`")
    version = attrs.get("schema_version")
    if version is not None and int(version) > COORDS_SCHEMA_VERSION:
        raise FeatureStoreError(
            f"{path}: schema_version {version} is newer than this toolkit reads ({COORDS_SCHEMA_VERSION}); "
            "upgrade sammil-deploy"
        )
    patch_size, patch_level = int(attrs["patch_size"]), int(attrs["patch_level"])
    downsample = float(np.ravel(attrs.get("downsample", [1.0]))[0])
    size0 = int(attrs.get("patch_size_level0_px", patch_size * max(1, int(downsample))))
    target_mpp = attrs.get("target_mpp")
    grid = PatchGrid(
        coords_level0_xy=coords,
        patch_size_level0_px=size0,
        step_level0_px=int(attrs.get("step_level0_px", size0)),
        patch_level=patch_level,
        read_size_px=patch_size,
        patch_downsample=downsample,
        output_size_px=int(attrs.get("output_size_px", patch_size)),
        target_mpp=None if target_mpp is None or math.isnan(float(target_mpp)) else float(target_mpp),
    )
    return CoordsFile(
        path=path,
        grid=grid,
        name=str(attrs.get("name", path.stem)),
        schema_version=None if version is None else int(version),
        attrs=attrs,
    )


def _plain(attrs: dict[str, Any]) -> dict[str, Any]:
    """HDF5 attrs → Python values; ``*_config`` JSON strings decoded."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        if key.endswith("_config") and isinstance(value, str):
            value = json.loads(value)
        out[key] = value
    return out
