"""Training objectives on one bag: ``paper`` (Eq. 13) and ``official`` (what the released code optimises).

The projection Linear + ReLU runs once per bag; each view (SG2M-masked bag, pseudo-bags, whole bag for the
consistency term) gathers its rows of the projected bag and gets its own dropout draw, which equals running
the views through the model separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sammil_deploy.mil.config import SamMilConfig
from sammil_deploy.mil.consistency import consistency_loss
from sammil_deploy.mil.data import BagTensors
from sammil_deploy.mil.masking import select_kept
from sammil_deploy.mil.model import MilHead
from sammil_deploy.mil.pseudobags import pseudo_bag_indices


@dataclass(frozen=True)
class LossTerms:
    """Total loss (with graph) and its detached parts (``cls``, ``pseudo``, ``con``, ``kept_fraction``)."""

    total: torch.Tensor
    parts: dict[str, float]


def bag_loss(
    model: MilHead,
    bag: BagTensors,
    cfg: SamMilConfig,
    *,
    generator: torch.Generator,
    teacher: MilHead | None = None,
) -> LossTerms:
    """Loss of one training bag (model in train mode).

    ``paper``: CE(SG2M-masked bag) + alpha·mean_g CE(pseudo-bag g) + beta·L_con(whole-bag attention).
    ``official``: CE(last pseudo-bag) + alpha·mean_g CE(pseudo-bag g), on the unmasked bag.

    Args:
        model: Head being trained.
        bag: Tokens on the model's device, label, group flags, categories.
        cfg: Objective and its coefficients.
        generator: CPU generator for masking and pseudo-bag permutations.
        teacher: EMA copy scoring instances for ``masking.selection = 'low_attention'``.
    """
    device = bag.tokens.device
    label = torch.tensor([bag.label], device=device)
    h = model.embed(bag.tokens)
    parts: dict[str, float] = {}

    def ce(rows: torch.Tensor | None) -> torch.Tensor:
        logits, _ = model.pool(h if rows is None else h[rows.to(device)])
        return F.cross_entropy(logits[None].float(), label)

    pseudo = []
    if cfg.uses_pseudo_bags:
        pseudo = [ce(rows) for rows in pseudo_bag_indices(h.shape[0], cfg.pseudo_bags, generator=generator)]
        parts["pseudo"] = float(torch.stack(pseudo).detach().mean())
    if cfg.objective == "official":
        total = pseudo[-1] + cfg.alpha * torch.stack(pseudo).mean()
        parts["cls"] = float(pseudo[-1].detach())
        return LossTerms(total, parts)

    whole_attention = None
    if cfg.masking.enabled:
        scores = None
        if cfg.masking.selection == "low_attention":
            if teacher is None:
                raise ValueError("low_attention masking needs the EMA teacher")
            with torch.no_grad():
                _, scores = teacher(bag.tokens)
        kept = select_kept(bag.relative_area, bag.is_group, cfg.masking, scores=scores, generator=generator)
        cls = ce(kept)
        parts["kept_fraction"] = kept.numel() / h.shape[0]
    else:
        logits, whole_attention = model.pool(h)
        cls = F.cross_entropy(logits[None].float(), label)
    total = cls
    parts["cls"] = float(cls.detach())
    if pseudo:
        total = total + cfg.alpha * torch.stack(pseudo).mean()
    if cfg.uses_consistency:
        if bag.relative_area is None:
            raise ValueError(f"{bag.slide_id}: consistency loss needs segment categories")
        if whole_attention is None:
            _, whole_attention = model.pool(h)
        con = consistency_loss(
            whole_attention.float(),
            bag.relative_area.to(device),
            method=cfg.consistency_method,
            chunk_rows=cfg.consistency_chunk_rows,
        )
        total = total + cfg.beta * con
        parts["con"] = float(con.detach())
    return LossTerms(total, parts)


@torch.no_grad()
def ema_update(teacher: MilHead, student: MilHead, momentum: float) -> None:
    """Teacher <- momentum·teacher + (1 - momentum)·student, parameter-wise."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
