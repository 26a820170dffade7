"""Pseudo-bags (Eq. 9-11): a random permutation of all tokens cut into m contiguous chunks."""

from __future__ import annotations

import torch


def pseudo_bag_indices(n_tokens: int, n_bags: int, *, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Split ``range(n_tokens)`` into pseudo-bags as the official code does.

    One CPU ``randperm`` over all tokens (group tokens included), chunks of floor(n_tokens / n_bags), the
    remainder appended to the last chunk. With fewer tokens than bags, each token is its own pseudo-bag.

    Returns:
        min(n_bags, n_tokens) int64 CPU index tensors that partition ``range(n_tokens)``.
    """
    if n_tokens < 1 or n_bags < 1:
        raise ValueError(f"need >= 1 token and >= 1 pseudo-bag, got {n_tokens} and {n_bags}")
    n_bags = min(n_bags, n_tokens)
    perm = torch.randperm(n_tokens, generator=generator)
    size = n_tokens // n_bags
    return [perm[i * size : (i + 1) * size] for i in range(n_bags - 1)] + [perm[(n_bags - 1) * size :]]
