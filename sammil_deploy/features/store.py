"""Per-slide HDF5 feature store (schema v1), CLAM-compatible, plus the official SAM-MIL and CLAM layouts.

Our file ``<slide_id>.h5``::

    coords            (N, 2) int64   level-0 top-left x, y; attrs patch_size, patch_level (CLAM)
    features          (N, D) float32
    segment_id        (N,)   int64   smallest SAM mask the patch touches (its category), -1 = none
    segment_area      (N,)   int64   that mask's pixels on the segmentation image, 0 = none
    membership        (M, 2) int64   (patch row, mask id) for every mask a patch touches
    group_ids         (G,)   int64   mask ids with >= 1 member, ascending
    group_area        (G,)   int64   their pixels on the segmentation image
    group_features    (G, D) float32 mean member feature per group (Eq. 3)
    attrs: schema_version, toolkit_version, slide_id, tissue_area_px, segmenter, and provenance
           (encoder, encoder_weights_sha256, segmenter_config, slide_mpp, slide_width_px, ...)

The SAM datasets are absent for a plain bag. Files are written to ``<name>.partial`` and renamed, so a reader
never sees half a file. The official layout (group rows appended to ``features`` with coords (-1, -1),
``is_group_feat``, ``relative_area``) is written by :func:`write_official` and read by :func:`read_official`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sammil_deploy import __version__
from sammil_deploy.errors import FeatureStoreError
from sammil_deploy.features.bag import NO_SEGMENT, FeatureBag, SpatialContext
from sammil_deploy.io_atomic import atomic_h5

SCHEMA_VERSION = 1
_CONTEXT_DATASETS = ("segment_id", "segment_area", "membership", "group_ids", "group_area", "group_features")


def write_bag(path: Path, bag: FeatureBag) -> Path:
    """Write ``bag`` atomically to ``path`` (schema v1) and return the path."""
    path = Path(path)
    with atomic_h5(path) as f:
        rows = max(1, min(bag.n_patches, 4096))
        coords = f.create_dataset("coords", data=bag.coords_level0_xy.astype(np.int64), chunks=(rows, 2))
        coords.attrs.update(patch_size=int(bag.patch_size_level0_px), patch_level=int(bag.patch_level))
        f.create_dataset("features", data=bag.features.astype(np.float32, copy=False), chunks=(rows, bag.dim))
        ctx = bag.context
        if ctx is not None:
            f.create_dataset("segment_id", data=ctx.segment_id.astype(np.int64))
            f.create_dataset("segment_area", data=ctx.segment_area_px.astype(np.int64))
            membership = np.stack([ctx.membership_patch, ctx.membership_mask], axis=1).astype(np.int64)
            f.create_dataset("membership", data=membership.reshape(-1, 2))
            f.create_dataset("group_ids", data=ctx.group_ids.astype(np.int64))
            f.create_dataset("group_area", data=ctx.group_area_px.astype(np.int64))
            f.create_dataset("group_features", data=ctx.group_features.astype(np.float32).reshape(-1, bag.dim))
            f.attrs.update(tissue_area_px=int(ctx.tissue_area_px), segmenter=ctx.segmenter)
        f.attrs.update(schema_version=SCHEMA_VERSION, toolkit_version=__version__, slide_id=bag.slide_id)
        for key, value in bag.attrs.items():
            f.attrs[key] = _attr_value(value)
    return path


def read_bag(path: Path, *, with_context: bool = True) -> FeatureBag:
    """Read and validate a feature file: ours, a plain CLAM ``.h5`` or a one-file official SAM-MIL layout.

    Plain CLAM files (coords + features) give a bag without context; files with ``is_group_feat`` /
    ``relative_area`` are read as the official layout.

    Raises:
        FeatureStoreError: Naming the file and what is wrong (missing dataset, shapes, newer schema).
    """
    path = Path(path)
    with _open_h5(path) as f:
        if "is_group_feat" in f or "relative_area" in f:
            return _official_from_open(path, f, f)
        version = int(f.attrs.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise FeatureStoreError(
                f"{path.name}: schema_version {version} is newer than this toolkit reads ({SCHEMA_VERSION}); "
                "upgrade sammil-deploy"
            )
        features, coords = _features_and_coords(path, f)
        patch_size, patch_level = _patch_geometry(path, f)
        ctx = _read_context(path, f, features.shape[1]) if with_context and "segment_id" in f else None
        attrs = {k: _from_attr(v) for k, v in f.attrs.items() if k not in ("tissue_area_px", "segmenter")}
    return _make_bag(path, features, coords, patch_size, patch_level, ctx, attrs)


def read_clam_pt(pt_path: Path, coords_h5: Path, *, patch_size_level0_px: int | None = None) -> FeatureBag:
    """Bag from a CLAM ``.pt`` feature tensor (N, D) plus its patch coords ``.h5`` (CLAM ``patches/`` file).

    The tensor loads with ``weights_only=True`` (no pickle code execution).
    """
    import torch

    try:
        tensor = torch.load(pt_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise FeatureStoreError(f"{pt_path.name}: cannot load the feature tensor ({err})") from None
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2:
        raise FeatureStoreError(f"{pt_path.name}: expected a (N, D) tensor, got {type(tensor).__name__}")
    with _open_h5(coords_h5) as f:
        if "coords" not in f:
            raise FeatureStoreError(f"{coords_h5.name}: no 'coords' dataset; pass the CLAM patches .h5 of this slide")
        coords = np.asarray(f["coords"][:], dtype=np.int64)
        size, level = _patch_geometry(coords_h5, f, fallback=patch_size_level0_px)
    features = tensor.float().numpy()
    if len(coords) != len(features):
        raise FeatureStoreError(
            f"{pt_path.name}: {len(features)} feature rows but {coords_h5.name} has {len(coords)} coords; "
            "they must come from the same patching run (official .pt files with group rows: use read_official)"
        )
    return _make_bag(pt_path, features, coords, size, level, None, {"source": "clam_pt"})


def write_official(path: Path, bag: FeatureBag) -> Path:
    """Write the official SAM-MIL layout in one file: N patch rows then G group rows.

    ``features`` (N+G, D), ``coords`` (N+G, 2) with (-1, -1) on group rows, ``is_group_feat`` (N+G,),
    ``relative_area`` (N+G,) = smallest-mask area, 1 for no mask, 0 for group rows. The official loaders read
    features from ``pt_files`` and the last two from ``sam_info``: all four datasets are in this one file.
    """
    ctx = bag.require_context()
    n_groups = ctx.n_groups
    coords = np.concatenate([bag.coords_level0_xy, -np.ones((n_groups, 2), np.int64)]).astype(np.int64)
    with atomic_h5(Path(path)) as f:
        f.create_dataset("features", data=bag.tokens(with_groups=True).astype(np.float32))
        f.create_dataset("coords", data=coords)
        f.create_dataset("is_group_feat", data=bag.is_group_token(with_groups=True).astype(np.int64))
        f.create_dataset("relative_area", data=bag.relative_area(with_groups=True))
    return Path(path)


def read_official(features_h5: Path, sam_info_h5: Path | None = None, *, patch_size_level0_px: int = 512) -> FeatureBag:
    """Read official SAM-MIL files: ``h5_files/<slide>.h5`` (+ ``sam_info/<slide>.h5`` if separate).

    The official layout keeps no mask ids or memberships: categories are the distinct ``relative_area``
    values (category id = rank of the area), each group row becomes its own group with unknown area (-1) and
    no memberships. That is exactly what SG2M, pseudo-bags and the consistency loss use.
    """
    with _open_h5(features_h5) as f:
        if sam_info_h5 is None:
            return _official_from_open(features_h5, f, f, patch_size_level0_px)
        with _open_h5(sam_info_h5) as info:
            return _official_from_open(features_h5, f, info, patch_size_level0_px)


def convert_layout(
    src: Path, out: Path, *, to: str = "official", sam_info: Path | None = None, patch_size_level0_px: int = 512
) -> Path:
    """Rewrite one feature file in the other layout: ``to="official"`` (ours -> SAM-MIL's) or ``"sammil"`` (back).

    ``sam_info`` is the official ``sam_info/<slide>.h5`` when it is separate from the features; official files do
    not record the patch size, so ``patch_size_level0_px`` supplies it. Returns ``out``.

    Raises:
        ConfigError: ``to`` is neither layout.
        FeatureStoreError: ``src`` is not a readable feature file of the other layout.
    """
    from sammil_deploy.errors import ConfigError

    if to == "official":
        return write_official(out, read_bag(src))
    if to == "sammil":
        return write_bag(out, read_official(src, sam_info, patch_size_level0_px=patch_size_level0_px))
    raise ConfigError(f"--to must be 'official' or 'sammil', got {to!r}")


def _official_from_open(path: Path, feats: h5py.File, info: h5py.File, patch_size: int | None = None) -> FeatureBag:
    features, coords = _features_and_coords(path, feats)
    for name in ("is_group_feat", "relative_area"):
        if name not in info:
            raise FeatureStoreError(f"{path.name}: official layout needs '{name}'; pass the sam_info .h5 too")
    is_group = np.asarray(info["is_group_feat"][:]).reshape(-1).astype(bool)
    area = np.asarray(info["relative_area"][:]).reshape(-1).astype(np.int64)
    if not len(is_group) == len(area) == len(features):
        raise FeatureStoreError(
            f"{path.name}: {len(features)} feature rows but is_group_feat/relative_area have "
            f"{len(is_group)}/{len(area)}; the files are not from the same slide or run"
        )
    patches = ~is_group
    patch_area = area[patches]
    in_mask = patch_area != 1  # the official code writes 1 for "in no mask"
    categories = np.unique(patch_area[in_mask])
    segment_id = np.full(patches.sum(), NO_SEGMENT, np.int64)
    segment_id[in_mask] = np.searchsorted(categories, patch_area[in_mask])
    n_groups = int(is_group.sum())
    ctx = SpatialContext(
        segment_id=segment_id,
        segment_area_px=np.where(in_mask, patch_area, 0),
        membership_patch=np.zeros(0, np.int64),
        membership_mask=np.zeros(0, np.int64),
        group_ids=np.arange(n_groups, dtype=np.int64),
        group_area_px=np.full(n_groups, -1, np.int64),
        group_features=features[is_group],
        segmenter="official_import",
    )
    size = patch_size if patch_size is not None else _patch_geometry(path, feats, fallback=512)[0]
    return _make_bag(path, features[patches], coords[patches], size, 0, ctx, {"source": "official"})


def _read_context(path: Path, f: h5py.File, dim: int) -> SpatialContext:
    missing = [name for name in _CONTEXT_DATASETS if name not in f]
    if missing:
        raise FeatureStoreError(f"{path.name}: spatial context incomplete, missing {missing}; re-run extraction")
    membership = np.asarray(f["membership"][:], dtype=np.int64).reshape(-1, 2)
    return SpatialContext(
        segment_id=np.asarray(f["segment_id"][:], dtype=np.int64),
        segment_area_px=np.asarray(f["segment_area"][:], dtype=np.int64),
        membership_patch=membership[:, 0].copy(),
        membership_mask=membership[:, 1].copy(),
        group_ids=np.asarray(f["group_ids"][:], dtype=np.int64),
        group_area_px=np.asarray(f["group_area"][:], dtype=np.int64),
        group_features=np.asarray(f["group_features"][:], dtype=np.float32).reshape(-1, dim),
        tissue_area_px=int(f.attrs.get("tissue_area_px", 0)),
        segmenter=str(_from_attr(f.attrs.get("segmenter", "unknown"))),
    )


def _features_and_coords(path: Path, f: h5py.File) -> tuple[np.ndarray, np.ndarray]:
    for name in ("features", "coords"):
        if name not in f:
            raise FeatureStoreError(
                f"{path.name}: no '{name}' dataset; expected a feature file (coords + features), "
                "not a patch-coords-only file; run `sammil-deploy extract`"
            )
    features = np.asarray(f["features"][:], dtype=np.float32)
    coords = np.asarray(f["coords"][:], dtype=np.int64)
    if features.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2:
        raise FeatureStoreError(
            f"{path.name}: features {features.shape} / coords {coords.shape} must be (N, D) / (N, 2)"
        )
    if len(features) != len(coords):
        raise FeatureStoreError(f"{path.name}: {len(features)} feature rows but {len(coords)} coords rows")
    if not np.all(np.isfinite(features)):
        raise FeatureStoreError(f"{path.name}: features contain NaN or Inf; re-extract this slide")
    return features, coords


def _patch_geometry(path: Path, f: h5py.File, fallback: int | None = None) -> tuple[int, int]:
    attrs = f["coords"].attrs if "coords" in f else {}
    size = attrs.get("patch_size", fallback)
    if size is None:
        raise FeatureStoreError(
            f"{path.name}: coords have no 'patch_size' attr; pass the patch size in level-0 px explicitly"
        )
    level = int(attrs.get("patch_level", 0))
    if level != 0 and "downsample" in attrs:  # CLAM stores patch_size at patch_level
        size = round(int(size) * float(np.asarray(attrs["downsample"]).reshape(-1)[0]))
    return int(size), level


def _make_bag(
    path: Path,
    features: np.ndarray,
    coords: np.ndarray,
    size: int,
    level: int,
    ctx: SpatialContext | None,
    attrs: dict[str, Any],
) -> FeatureBag:
    slide_id = str(attrs.pop("slide_id", path.stem))
    try:
        return FeatureBag(
            slide_id=slide_id,
            coords_level0_xy=coords,
            features=features,
            patch_size_level0_px=size,
            patch_level=level,
            context=ctx,
            attrs=attrs,
        )
    except FeatureStoreError as err:
        raise FeatureStoreError(f"{path.name}: {err}") from None


def _open_h5(path: Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise FeatureStoreError(f"{path}: no such feature file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise FeatureStoreError(f"{path.name}: not a readable HDF5 file ({err}); re-create it") from None


def _attr_value(value: Any) -> Any:
    if isinstance(value, dict | list | tuple) or value is None:
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, Path):
        return str(value)
    return value


def _from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "{[" or value == "null":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value
