"""Decision thresholds on the logit margin: Youden midpoints that survive saturated, separable and tied scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sammil_deploy.errors import ConfigError
from sammil_deploy.mil.metrics import classification_metrics
from sammil_deploy.mil.threshold import (
    Threshold,
    choose_threshold,
    margin_to_probability,
    margins_from_probs,
    parse_threshold_option,
    threshold_from_fields,
    youden_margin,
)


def test_saturated_separable_validation_gets_the_midpoint_of_the_gap():
    # The bug of issue 11: softmax probabilities of these logits are exactly 0.0 / 1.0 for most bags, and the
    # old rule returned the lowest positive probability, 1.0, as the threshold.
    logits = np.array([[40.0, -16.0], [30.0, -5.0], [3.0, 1.0], [-1.0, 2.0], [-16.0, 95.8], [-20.0, 60.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    margins = logits[:, 1] - logits[:, 0]  # -56, -35, -2, 3, 111.8, 80
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert probs[4, 1] == 1.0
    assert probs[0, 1] < 1e-20
    thr = choose_threshold("youden", y, margins)
    assert thr.margin == pytest.approx(0.5)  # between the highest negative (-2) and the lowest positive (3)
    assert 0.0 < thr.probability < 1.0
    assert thr.probability == pytest.approx(1 / (1 + math.exp(-0.5)))
    # A tumour slide with P(1) = 0.99999 is positive; the old threshold 1.0 called it negative.
    assert thr.decide(np.array([math.log(0.99999 / 0.00001)]))[0]
    m = classification_metrics(y, probs, threshold=thr, margins=margins)
    assert m["accuracy"] == 1.0
    assert m["accuracy_at_0.5"] == 1.0


def test_fully_saturated_probabilities_give_a_finite_threshold():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    margins = margins_from_probs(probs)
    assert np.isinf(margins).all()
    thr = choose_threshold("youden", y, margins)
    assert math.isfinite(thr.margin)
    assert 0.0 < thr.probability < 1.0
    assert thr.decide(margins).tolist() == [False, False, True, True]
    # Huge but finite margins: the probability shown is still strictly inside (0, 1).
    big = choose_threshold("youden", y, np.array([100.0, 110.0, 300.0, 320.0]))
    assert big.margin == pytest.approx(205.0)
    assert 0.0 < big.probability < 1.0
    assert 0.0 < margin_to_probability(-800.0) < margin_to_probability(800.0) < 1.0


def test_youden_never_returns_a_score_and_widest_gap_wins_ties():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.55, 0.7, 0.9])
    # J = 2/3 at two cuts: "score >= 0.7" (gap 0.6..0.7) and "score >= 0.55" (gap 0.2..0.55); the wider gap wins
    # and the threshold is its midpoint, not a score.
    assert youden_margin(y, s) == pytest.approx((0.2 + 0.55) / 2)
    assert youden_margin(y, s) not in set(s.tolist())
    # Ties in the scores themselves: equal scores fall on the same side of any cut.
    y2 = np.array([0, 0, 1, 0, 1, 1, 1])
    s2 = np.array([-1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 5.0])
    thr = youden_margin(y2, s2)
    assert thr == pytest.approx(1.0)  # J = 3/4 between 0 and 2; cutting inside the tie at 0 is impossible
    pred = s2 >= thr
    assert (pred[s2 == 0.0] == pred[s2 == 0.0][0]).all()


def test_useless_or_single_class_validation_falls_back_to_margin_zero():
    assert youden_margin(np.array([1, 1, 1]), np.array([0.1, 2.0, 3.0])) == 0.0
    assert youden_margin(np.array([0, 1, 0, 1]), np.array([3.0, 1.0, 2.0, 0.0])) == 0.0  # max J < 0
    assert youden_margin(np.array([0, 1]), np.array([1.0, 1.0])) == 0.0  # all tied: J = 0


def test_threshold_options_and_old_checkpoint_fields():
    assert parse_threshold_option("Youden") == "youden"
    assert parse_threshold_option("0.5") == "0.5"
    assert parse_threshold_option("0.3") == pytest.approx(0.3)
    for bad in ("1.0", "0", "-0.2", "half"):
        with pytest.raises(ConfigError, match="threshold"):
            parse_threshold_option(bad)
    assert choose_threshold("0.5", np.zeros(0), np.zeros(0)) == Threshold(0.0, "0.5")
    fixed = choose_threshold(0.8, np.zeros(0), np.zeros(0))
    assert fixed.rule == "fixed"
    assert fixed.probability == pytest.approx(0.8)
    # A checkpoint written before margins were recorded: the margin is the logit of its probability.
    old = threshold_from_fields(0.4, None, None)
    assert old.margin == pytest.approx(math.log(0.4 / 0.6))
    assert threshold_from_fields(1.0, None, None).margin > 30  # old saturated threshold keeps its meaning
    assert threshold_from_fields(None, None, None) is None
    with pytest.raises(ConfigError, match="finite"):
        Threshold(math.inf)


def test_infer_decides_on_the_logit_margin():
    from sammil_deploy.pipeline.report import decision_threshold, predict_label

    names = ("normal", "tumor")
    recorded = Threshold(2.5, "youden")
    # The shared slide with the demo bundle: logits (-16.0, 95.8), P(tumor) == 1.0 in float.
    assert predict_label([-16.0, 95.8], names, recorded) == ("tumor", 1)
    assert predict_label([0.0, 2.0], names, recorded) == ("normal", 0)  # P(tumor) = 0.88 but margin 2 < 2.5
    assert predict_label([0.0, 2.0], names, decision_threshold(recorded, "0.5")) == ("tumor", 1)
    assert decision_threshold(recorded, "youden") is recorded
    assert decision_threshold(recorded, "0.95").margin == pytest.approx(math.log(0.95 / 0.05))
    assert "logit_tumor - logit_normal >= 2.5" in recorded.describe(names)
    assert predict_label([0.1, 0.3, 0.2], ("a", "b", "c"), None) == ("b", 1)
