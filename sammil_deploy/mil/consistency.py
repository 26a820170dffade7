"""Attention-consistency loss (Eq. 12, as the official code computes it).

Within each segment category c (a distinct ``relative_area`` value; group tokens (0) and "in no mask" (1)
count as categories; only categories with >= 2 members), each member i adds
``sqrt(sum_{j in c} (a_i - a_j)^2)``, with a the softmax attention over the whole bag; the sum is divided by
the number of those members. Two exact methods:

- ``moments`` (default): sum_j (a_i - a_j)^2 = n_c·(a_i - mean_c)^2 + sum_j (a_j - mean_c)^2, O(T) memory and
  time, computed on centred values in float64 so nothing cancels;
- ``pairwise``: the official chunked evaluation, O(chunk_rows·n_c) memory per step.
"""

from __future__ import annotations

import torch


def consistency_loss(
    attention: torch.Tensor, category: torch.Tensor, *, method: str = "moments", chunk_rows: int = 2048
) -> torch.Tensor:
    """Mean same-category L2 attention distance.

    Args:
        attention: (T,) float softmax attention over the whole bag.
        category: (T,) int64 category of each token (``relative_area``).
        method: ``moments`` or ``pairwise``.
        chunk_rows: Rows per chunk for ``pairwise``.

    Returns:
        Scalar tensor (attention's dtype); 0 when no category has two members.
    """
    _, inverse, counts = torch.unique(category, return_inverse=True, return_counts=True)
    member = counts[inverse] >= 2
    if not bool(member.any()):
        return attention.sum() * 0.0
    if method == "moments":
        total = _moments(attention, inverse, counts, member)
    elif method == "pairwise":
        total = _pairwise(attention, inverse, counts, chunk_rows)
    else:
        raise ValueError(f"unknown consistency method {method!r}; use 'moments' or 'pairwise'")
    return (total / member.sum()).to(attention.dtype)


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """Square root with a zero (not infinite) gradient at 0, like the gradient of a zero-length norm."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def _moments(
    attention: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor, member: torch.Tensor
) -> torch.Tensor:
    a = attention.to(torch.float64)
    n_c = counts.to(torch.float64)
    mean = torch.zeros_like(n_c).index_add(0, inverse, a) / n_c
    centred = a - mean[inverse]
    sum_sq = torch.zeros_like(n_c).index_add(0, inverse, centred * centred)
    per_token = n_c[inverse] * centred * centred + sum_sq[inverse]
    return _safe_sqrt(per_token.clamp(min=0.0))[member].sum()


def _pairwise(attention: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    total = attention.new_zeros((), dtype=torch.float64)
    for c in torch.nonzero(counts >= 2)[:, 0].tolist():
        a_c = attention[inverse == c]
        for start in range(0, len(a_c), chunk_rows):
            diff = a_c[start : start + chunk_rows, None] - a_c[None, :]
            total = total + _safe_sqrt((diff * diff).sum(dim=1)).to(torch.float64).sum()
    return total
