"""SG2M: SAM-guided group masking (Eq. 5-8) and the random-mask ablations; training only.

Masking *drops* instances (the kept rows are gathered, the bag shrinks), as the official code does; the
paper's Eq. 5 writes it as a Hadamard product. A token's segment category is its ``relative_area`` value
(area in segmentation-image pixels of the smallest SAM mask containing it; 1 = in no mask, 0 = group token).
"""

from __future__ import annotations

import torch

from sammil_deploy.mil.config import MaskConfig


def mask_ratio_for_area(area_px: torch.Tensor, cfg: MaskConfig) -> torch.Tensor:
    """Mask ratio r of segment categories of area ``area_px`` (K,) -> (K,) float64.

    ``sigmoid``: r = MR·1/(1 + exp(-k·(A - A0))) (official code form of Eq. 7-8); ``linear``:
    r = MR·min(A / linear_area_px, 1); ``constant``: r = MR.
    """
    area = area_px.to(torch.float64)
    if cfg.ratio_fn == "sigmoid":
        return cfg.mask_ratio / (1.0 + torch.exp(-cfg.sigmoid_k * (area - cfg.sigmoid_a0_px)))
    if cfg.ratio_fn == "linear":
        return cfg.mask_ratio * torch.clamp(area / cfg.linear_area_px, max=1.0)
    return torch.full_like(area, cfg.mask_ratio)


def select_kept(
    relative_area: torch.Tensor | None,
    is_group: torch.Tensor,
    cfg: MaskConfig,
    *,
    scores: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices of the tokens that survive masking, in their original order.

    Args:
        relative_area: (T,) int64 official ``relative_area`` (needed by ``sg2m`` only).
        is_group: (T,) bool, True on group tokens (never dropped except by the ``random`` ablation).
        cfg: Strategy, ratio function and its constants.
        scores: (T,) float teacher attention for ``selection = 'low_attention'`` (lowest dropped first).
        generator: CPU random generator (seeded by the training loop).

    Returns:
        (T',) int64 kept indices, T' >= 1.
    """
    n_tokens = int(is_group.shape[0])
    device = is_group.device
    if not cfg.enabled:
        return torch.arange(n_tokens, device=device)
    if cfg.strategy == "sg2m":
        if relative_area is None:
            raise ValueError("sg2m masking needs relative_area")
        drop = _sg2m_dropped(relative_area, is_group, cfg, scores, generator)
    else:
        candidates = torch.arange(n_tokens) if cfg.strategy == "random" else torch.nonzero(~is_group.cpu())[:, 0]
        # Official random_masking keeps int(L·(1 - r)) tokens of the L candidates; we keep at least one.
        n_keep = max(int(len(candidates) * (1.0 - cfg.mask_ratio)), 1)
        order = torch.randperm(len(candidates), generator=generator)
        drop = candidates[order[n_keep:]]
    keep = torch.ones(n_tokens, dtype=torch.bool)
    keep[drop] = False
    return torch.nonzero(keep)[:, 0].to(device)


def _sg2m_dropped(
    relative_area: torch.Tensor,
    is_group: torch.Tensor,
    cfg: MaskConfig,
    scores: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(n_dropped,) CPU indices: floor(n_c·r_c) patches of each category c, lowest key first."""
    patch_rows = torch.nonzero(~is_group.cpu())[:, 0]
    area = relative_area.cpu()[patch_rows]
    if len(patch_rows) == 0:
        return patch_rows
    values, category, counts = torch.unique(area, return_inverse=True, return_counts=True)
    n_drop = torch.floor(counts.to(torch.float64) * mask_ratio_for_area(values, cfg)).to(torch.int64)
    if scores is None:
        key = torch.rand(len(patch_rows), generator=generator)
    else:
        key = scores.detach().float().cpu()[patch_rows]
    # Sort by key, then stably by category: each category's members in ascending key order.
    by_key = torch.argsort(key, stable=True)
    order = by_key[torch.argsort(category[by_key], stable=True)]
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order)) - start[category[order]]
    return patch_rows[order[rank < n_drop[category[order]]]]
