"""Binary decision thresholds on the logit margin (log-odds), robust to saturated probabilities.

A two-class head decides on the margin ``m = logit_1 - logit_0`` = log(P(1) / P(0)): class 1 iff
``m >= threshold.margin``. Probabilities saturate at 0 or 1 long before logits do (the real CMU-1 slide gets
logits (-16.0, 95.8) from the demo bundle), so a threshold chosen or applied on probabilities can collapse to
exactly 1.0 and call a P(1) = 0.99999 slide negative. Margins keep the order of all scores.

The Youden rule returns the midpoint between the two margins that bracket the optimal cut (never a score
itself), so a separable validation split gets a threshold in the gap between its classes, not on its lowest
positive score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sammil_deploy.errors import ConfigError

THRESHOLD_RULES = ("youden", "0.5", "fixed")
# Smallest gap to 0 or 1 of a recorded threshold probability: 1 - 1e-15 is still < 1 in float64.
_PROBABILITY_EPS = 1e-15


@dataclass(frozen=True)
class Threshold:
    """A binary decision rule: class 1 iff ``logit_1 - logit_0 >= margin``.

    Attributes:
        margin: Threshold on the logit margin (log-odds of class 1), finite.
        rule: How it was chosen: ``youden`` (validation ROC), ``0.5`` (margin 0) or ``fixed`` (user value).
    """

    margin: float
    rule: str = "youden"

    def __post_init__(self) -> None:
        if not math.isfinite(self.margin):
            raise ConfigError(f"a decision threshold margin must be finite, got {self.margin}")
        if self.rule not in THRESHOLD_RULES:
            raise ConfigError(f"threshold rule must be one of {list(THRESHOLD_RULES)}, got {self.rule!r}")

    @property
    def probability(self) -> float:
        """The same threshold on P(class 1): sigmoid(margin), kept strictly inside (0, 1) for display."""
        return margin_to_probability(self.margin)

    def decide(self, margins: np.ndarray) -> np.ndarray:
        """Boolean "is class 1" for an array of margins."""
        return np.asarray(margins, dtype=np.float64) >= self.margin

    def describe(self, class_names: tuple[str, ...] | list[str]) -> str:
        """Human-readable decision, e.g. ``tumor if logit_tumor - logit_normal >= 0.41 (P(tumor) >= 0.6011)``."""
        neg, pos = class_names[0], class_names[1]
        return (
            f"{pos} if logit_{pos} - logit_{neg} >= {self.margin:.6g} "
            f"(P({pos}) >= {self.probability:.6g}; rule {self.rule})"
        )


def margin_to_probability(margin: float) -> float:
    """sigmoid(margin) clipped to [eps, 1 - eps] so that a recorded probability is never exactly 0 or 1."""
    p = 1.0 / (1.0 + math.exp(-margin)) if margin >= 0 else math.exp(margin) / (1.0 + math.exp(margin))
    return min(max(p, _PROBABILITY_EPS), 1.0 - _PROBABILITY_EPS)


def probability_to_margin(probability: float) -> float:
    """logit(p) for a probability strictly inside (0, 1)."""
    if not 0.0 < probability < 1.0:
        raise ConfigError(
            f"a decision threshold on P(class 1) must be strictly between 0 and 1, got {probability}; "
            "use --threshold youden, 0.5 or a value like 0.3"
        )
    return math.log(probability) - math.log1p(-probability)


def margins_from_logits(logits: np.ndarray) -> np.ndarray:
    """(n,) margins ``logit_1 - logit_0`` of (n, 2) logits."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits[:, 1] - logits[:, 0]


def margins_from_probs(probs: np.ndarray) -> np.ndarray:
    """(n,) margins ``log P1 - log P0`` of (n, 2) probabilities (±inf where a probability is exactly 0)."""
    probs = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(probs[:, 1]) - np.log(probs[:, 0])


def youden_margin(y_true: np.ndarray, margins: np.ndarray) -> float:
    """Margin threshold maximising Youden's J = TPR - FPR, as the midpoint of the bracketing margins.

    The candidate cuts lie between consecutive distinct margins; the optimal cut between ``s_hi`` (lowest score
    called positive) and ``s_lo`` (highest called negative) gives ``(s_hi + s_lo) / 2``. When several cuts reach
    the same J (ties), the one with the widest gap wins (the most room on both sides), then the highest.
    Infinite margins (from saturated probabilities) are ignored as bracket ends; a useless validation set
    (one class, or max J <= 0) gives margin 0, i.e. P(1) >= 0.5.

    Args:
        y_true: (n,) 0/1 labels.
        margins: (n,) logit margins (higher = more likely class 1).
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(margins, dtype=np.float64)
    if y.all() or (~y).all() or np.isnan(s).any():
        return 0.0
    values, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse.reshape(-1), weights=y, minlength=len(values))[::-1]
    neg = np.bincount(inverse.reshape(-1), weights=~y, minlength=len(values))[::-1]
    values = values[::-1]  # distinct margins, descending; cut k: positive iff margin >= values[k]
    j = (np.cumsum(pos) / y.sum() - np.cumsum(neg) / (~y).sum())[:-1]  # the last cut (all positive) has J = 0
    if len(j) == 0 or j.max() <= 1e-12:
        return 0.0
    hi, lo = values[:-1], values[1:]
    best = np.flatnonzero(j >= j.max() - 1e-12)
    gaps = _finite_gap(hi[best], lo[best])
    k = int(best[int(np.argmax(gaps))])  # argmax: first = highest cut among equal gaps
    return _midpoint(float(hi[k]), float(lo[k]))


def choose_threshold(rule: str | float, y_true: np.ndarray, margins: np.ndarray) -> Threshold:
    """The threshold for a ``--threshold`` choice: ``youden`` on these validation margins, ``0.5``, or P(1)."""
    if rule == "youden":
        return Threshold(youden_margin(y_true, margins), "youden")
    if rule == "0.5" or rule == 0.5:
        return Threshold(0.0, "0.5")
    return Threshold(probability_to_margin(float(rule)), "fixed")


def parse_threshold_option(text: str | float | None) -> str | float | None:
    """``youden`` | ``0.5`` | a probability in (0, 1) → the rule (None passes through).

    Raises:
        ConfigError: Anything else, with the accepted forms.
    """
    if text is None or isinstance(text, float):
        return None if text is None else _checked_probability(text)
    value = str(text).strip().lower()
    if value in ("youden", "0.5"):
        return value
    try:
        return _checked_probability(float(value))
    except ValueError:
        raise ConfigError(
            f"--threshold must be 'youden', '0.5' or a probability strictly between 0 and 1, got {text!r}"
        ) from None


def threshold_fields(threshold: Threshold | None) -> dict[str, Any]:
    """The threshold as stored in checkpoints, bundles and summaries: probability, margin and rule."""
    if threshold is None:
        return {"threshold": None, "threshold_margin": None, "threshold_rule": None}
    return {"threshold": threshold.probability, "threshold_margin": threshold.margin, "threshold_rule": threshold.rule}


def threshold_from_fields(probability: float | None, margin: float | None, rule: str | None) -> Threshold | None:
    """Inverse of :func:`threshold_fields`; older files have only the probability (its logit is used)."""
    if margin is not None:
        return Threshold(float(margin), rule or "youden")
    if probability is None:
        return None
    # Before margins were recorded a saturated Youden threshold could be exactly 1.0: keep its meaning (only
    # P(1) = 1 passes) as closely as a finite margin can.
    p = min(max(float(probability), _PROBABILITY_EPS), 1.0 - _PROBABILITY_EPS)
    return Threshold(probability_to_margin(p), rule or "youden")


def _checked_probability(value: float) -> float:
    probability_to_margin(value)  # raises for values outside (0, 1)
    return 0.5 if value == 0.5 else value


def _finite_gap(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    gap = hi - lo
    return np.where(np.isfinite(gap), gap, np.inf)


def _midpoint(hi: float, lo: float) -> float:
    """Midpoint of a bracket; with an infinite end, one unit of log-odds beyond the finite one."""
    if math.isfinite(hi) and math.isfinite(lo):
        return (hi + lo) / 2.0
    if math.isfinite(lo):
        return lo + 1.0
    if math.isfinite(hi):
        return hi - 1.0
    return 0.0
