"""Synthetic cohorts with SAM-like context, for tests, timing and demos of the training stage.

Each slide is a grid of patches cut into spatially coherent segments (Voronoi cells around random seeds),
plus one slide-wide mask that every patch touches (so masks overlap and a patch's category is its smallest
mask). Class k > 0 slides contain one "tumour" segment, a small share of the patches, whose features are
shifted along class k's signature direction; class-0 slides have none. The label therefore depends on a
small subset of instances, as in CAMELYON16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sammil_deploy.features.bag import FeatureBag, SpatialContext, group_features_from_memberships

PX_PER_PATCH = 64  # segmentation-image pixels per patch (8x8 footprint): areas span the sigmoid


def synthetic_bag(
    slide_id: str,
    label: int,
    rng: np.random.Generator,
    *,
    n_instances: int = 300,
    dim: int = 32,
    n_segments: int = 12,
    tumour_fraction: float = 0.06,
    signal: float = 1.5,
    signatures: np.ndarray | None = None,
) -> FeatureBag:
    """One synthetic slide.

    Args:
        slide_id: Name of the bag.
        label: Class index; > 0 plants a tumour segment with ``signatures[label - 1]``.
        rng: Random generator.
        n_instances: Patches N.
        dim: Feature dimension D.
        n_segments: Segments (Voronoi cells) before the slide-wide mask.
        tumour_fraction: Share of patches in the tumour segment.
        signal: Shift of tumour features along the unit signature.
        signatures: (C - 1, D) unit vectors, one per positive class (default: basis vectors).

    Returns:
        FeatureBag with (N, D) float32 features and a SpatialContext with G = n_segments + 1 groups.
    """
    side = int(np.ceil(np.sqrt(n_instances)))
    grid = np.stack(np.divmod(np.arange(n_instances), side), axis=1)[:, ::-1].astype(np.int64)
    seeds = rng.uniform(0, side, size=(n_segments, 2))
    seg = np.argmin(((grid[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)
    features = rng.normal(0.0, 1.0, size=(n_instances, dim)).astype(np.float32)
    features += rng.normal(0.0, 0.5, size=(n_segments, dim)).astype(np.float32)[seg]  # segment texture
    if label > 0:
        if signatures is None:
            signatures = np.eye(dim, dtype=np.float32)[: max(label, 1)]
        n_tumour = max(int(round(tumour_fraction * n_instances)), 2)
        centre = grid[rng.integers(n_instances)]
        tumour = np.argsort(((grid - centre) ** 2).sum(-1), kind="stable")[:n_tumour]
        seg[tumour] = n_segments  # a segment of its own
        features[tumour] += signal * signatures[label - 1]
    wide = n_segments + 1  # slide-wide mask id
    ids, counts = np.unique(seg, return_counts=True)
    area_of = dict(zip(ids.tolist(), (counts * PX_PER_PATCH).tolist(), strict=True))
    area_of[wide] = n_instances * PX_PER_PATCH
    member_patch = np.concatenate([np.arange(n_instances), np.arange(n_instances)])
    member_mask = np.concatenate([seg, np.full(n_instances, wide)]).astype(np.int64)
    group_ids = np.array(sorted(set(member_mask.tolist())), dtype=np.int64)
    context = SpatialContext(
        segment_id=seg.astype(np.int64),
        segment_area_px=np.array([area_of[s] for s in seg.tolist()], dtype=np.int64),
        membership_patch=member_patch.astype(np.int64),
        membership_mask=member_mask,
        group_ids=group_ids,
        group_area_px=np.array([area_of[g] for g in group_ids.tolist()], dtype=np.int64),
        group_features=group_features_from_memberships(features, member_patch, member_mask, group_ids),
        tissue_area_px=n_instances * PX_PER_PATCH,
        segmenter="synthetic",
    )
    return FeatureBag(
        slide_id=slide_id,
        coords_level0_xy=grid * 512,
        features=features,
        patch_size_level0_px=512,
        context=context,
        attrs={"encoder": "synthetic"},
    )


def synthetic_cohort(
    n_bags: int, *, n_classes: int = 2, seed: int = 0, **bag_kwargs: object
) -> tuple[list[FeatureBag], list[int]]:
    """``n_bags`` synthetic slides with balanced labels ``0..n_classes-1`` (see :func:`synthetic_bag`)."""
    rng = np.random.default_rng(seed)
    dim = int(bag_kwargs.get("dim", 32))  # type: ignore[arg-type]
    signatures = np.linalg.qr(rng.normal(size=(dim, dim)))[0][: n_classes - 1].astype(np.float32)
    labels = [i % n_classes for i in range(n_bags)]
    bags = [
        synthetic_bag(f"slide_{i:03d}", y, rng, signatures=signatures, **bag_kwargs)  # type: ignore[arg-type]
        for i, y in enumerate(labels)
    ]
    return bags, labels


def classical_mil_table(
    *,
    n_bags: int = 92,
    dim: int = 166,
    bag_size_range: tuple[int, int] = (2, 40),
    n_clusters: int = 10,
    witness_rate: float = 0.2,
    signal: float = 4.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A MUSK-shaped MIL problem without spatial context: one row per instance.

    Instances are noisy members of ``n_clusters`` shared "conformation" clusters (N(0, 1) centres, unit noise).
    A positive bag holds at least one witness (about ``witness_rate`` of its instances) shifted by ``signal``
    along one hidden unit direction; negative bags hold none (the standard MIL assumption). Bag sizes are
    log-uniform in ``bag_size_range``, labels alternate (balanced).

    Returns:
        bag_ids (n,) str, labels (n,) int64 (per instance, constant within a bag), features (n, dim) float32.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    lo, hi = bag_size_range
    ids, labels, rows = [], [], []
    for b in range(n_bags):
        label = b % 2
        n = int(np.clip(np.exp(rng.uniform(np.log(lo), np.log(hi + 1))), lo, hi))
        x = centres[rng.integers(n_clusters, size=n)] + rng.normal(size=(n, dim))
        if label:
            witnesses = rng.permutation(n)[: max(1, rng.binomial(n, witness_rate))]
            x[witnesses] += signal * direction
        ids += [f"bag{b:03d}"] * n
        labels += [label] * n
        rows.append(x)
    return np.asarray(ids), np.asarray(labels, dtype=np.int64), np.concatenate(rows).astype(np.float32)


def write_mil_table(out: Path, *, n_bags: int = 92, dim: int = 166, signal: float = 4.0, seed: int = 0) -> int:
    """Write :func:`classical_mil_table` as CSV ``bag_id,label,f0..f<dim-1>`` (atomically); return the row count."""
    import csv

    from sammil_deploy.io_atomic import atomic_path

    ids, labels, features = classical_mil_table(n_bags=n_bags, dim=dim, signal=signal, seed=seed)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["bag_id", "label", *[f"f{j}" for j in range(dim)]])
        for bag, label, row in zip(ids.tolist(), labels.tolist(), features, strict=True):
            writer.writerow([bag, label, *[f"{v:.5g}" for v in row]])
    return len(ids)
