"""MIL heads: attention MIL (AB-MIL as in the official SAM-MIL code), mean- and max-pooling baselines.

Every head maps one bag ``x`` (N, D) float to ``(logits (C,), attention (N,))``. Training splits the forward
into :meth:`MilHead.embed` (Linear + ReLU, shared by all views of a bag: masked bag, pseudo-bags, full bag)
and :meth:`MilHead.pool` (dropout, pooling, classifier), so the costly projection runs once per slide and step.
"""

from __future__ import annotations

import torch
from torch import nn

from sammil_deploy.errors import ConfigError
from sammil_deploy.mil.config import ModelConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MilHead(nn.Module):
    """Common part: projection Linear(D -> E) + ReLU, dropout, classifier Linear(E -> C)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        # Optional first layer (Ilse et al.'s two-layer embedding); absent by default, so state dicts of
        # one-layer heads (and imported official checkpoints) keep their keys.
        self.embed_hidden = nn.Linear(cfg.in_dim, cfg.embed_hidden) if cfg.embed_hidden else None
        self.embed_fc = nn.Linear(cfg.embed_hidden or cfg.in_dim, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.embed_dim, cfg.n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, E) projected instances (before dropout)."""
        if self.embed_hidden is not None:
            x = self.dropout(torch.relu(self.embed_hidden(x)))
        return torch.relu(self.embed_fc(x))

    def pool(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, E) embedded instances -> (logits (C,), attention (N,) summing to 1)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify one bag.

        Args:
            x: (N, D) float instance features (patch rows, then group tokens if the model was trained with them).

        Returns:
            logits (C,) and attention (N,), float, summing to 1 over instances.
        """
        return self.pool(self.embed(x))


class AttentionMIL(MilHead):
    """Attention MIL (Ilse et al.) in the SAM-MIL configuration.

    Attention score s_i = c(act(a(h_i))) (plain) or c(act(a(h_i)) * sigmoid(b(h_i))) (gated), softmax over the
    bag, bag embedding sum_i softmax(s)_i h_i, logits = classifier(embedding). Official SAM-MIL: ReLU, no
    attention biases; CLAM: tanh, gated, with biases.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.attention_a = nn.Linear(cfg.embed_dim, cfg.attn_dim, bias=cfg.attention_bias)
        self.attention_b = nn.Linear(cfg.embed_dim, cfg.attn_dim, bias=cfg.attention_bias) if cfg.gated else None
        self.attention_c = nn.Linear(cfg.attn_dim, 1, bias=cfg.attention_bias)
        self.act = _ACTIVATIONS[cfg.activation]()

    def attention_scores(self, h: torch.Tensor) -> torch.Tensor:
        """(N, E) -> (N,) unnormalised attention scores."""
        a = self.act(self.attention_a(h))
        if self.attention_b is not None:
            a = a * torch.sigmoid(self.attention_b(h))
        return self.attention_c(a).squeeze(-1)

    def pool(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        h = self.dropout(h)
        attention = torch.softmax(self.attention_scores(h).float(), dim=0)
        bag = attention.to(h.dtype) @ h
        return self.classifier(bag), attention


class MeanMIL(MilHead):
    """Mean pooling; the returned attention is uniform, 1/N."""

    def pool(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        h = self.dropout(h)
        n = h.shape[0]
        return self.classifier(h.mean(dim=0)), torch.full((n,), 1.0 / n, device=h.device)


class MaxMIL(MilHead):
    """Max pooling over instances per embedding dimension.

    The returned attention is each instance's *max-contribution share*: the fraction of the E embedding
    dimensions whose maximum it holds (sums to 1; not differentiable).
    """

    def pool(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        h = self.dropout(h)
        bag, winner = h.max(dim=0)
        share = torch.bincount(winner, minlength=h.shape[0]).float() / h.shape[1]
        return self.classifier(bag), share


_HEADS: dict[str, type[MilHead]] = {"attention": AttentionMIL, "mean": MeanMIL, "max": MaxMIL}


def build_model(cfg: ModelConfig, *, init: bool = True) -> MilHead:
    """Build the head for ``cfg``; ``init`` applies xavier-normal weights and zero biases (official init).

    Raises:
        ConfigError: On an unknown ``cfg.kind``.
    """
    try:
        model = _HEADS[cfg.kind](cfg)
    except KeyError:
        raise ConfigError(f"unknown model kind {cfg.kind!r}; choose from {sorted(_HEADS)}") from None
    if init:
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return model


class BagClassifier(nn.Module):
    """``features (N, D) -> (logits (C,), probabilities (C,), attention (N,))`` around a trained head.

    The deployed MIL head's I/O contract: PyTorch inference runs this module and the export stage exports it.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See the class docstring."""
        logits, attention = self.head(features)
        return logits, torch.softmax(logits, dim=-1), attention
