"""Parity reports: verdicts that can fail, worst indices, mask IoU, shape and name mismatches."""

from __future__ import annotations

import numpy as np
import pytest

from sammil_deploy.errors import ConfigError, ExportError, ParityError
from sammil_deploy.export.verify import TOLERANCES, Tolerance, mask_iou, verify_parity


def _reference(inputs):
    x = inputs["x"]
    return {"y": 2.0 * x, "logits": x - 0.5}


def test_identical_candidate_passes_and_noisy_one_fails_with_worst_index():
    inputs = [{"x": np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)}, {"x": np.ones((5, 4), np.float32)}]
    assert verify_parity(_reference, _reference, inputs, "fp32").passed

    def noisy(feeds):
        out = _reference(feeds)
        if feeds["x"].shape[0] == 5:
            out["y"] = out["y"].copy()
            out["y"][4, 2] += 0.5
        return out

    report = verify_parity(_reference, noisy, inputs, "fp16", artifact="noisy")
    assert not report.passed
    y = next(o for o in report.outputs if o.name == "y")
    assert not y.passed
    assert y.worst_index == (1, 4, 2)
    assert y.max_abs == pytest.approx(0.5)
    assert y.max_rel == pytest.approx(0.25)
    assert y.shape == (5, 4)
    assert next(o for o in report.outputs if o.name == "logits").passed
    with pytest.raises(ParityError, match="noisy"):
        report.raise_if_failed()
    assert report.to_dict()["passed"] is False
    assert "FAIL" in report.summary()


def test_tolerances_order_by_precision():
    assert TOLERANCES["fp32"].cosine_min > TOLERANCES["fp16"].cosine_min > TOLERANCES["int8"].cosine_min
    with pytest.raises(ConfigError):
        Tolerance(atol=-1, rtol=0, cosine_min=0.9)
    with pytest.raises(ConfigError, match="unknown precision"):
        verify_parity(_reference, _reference, {"x": np.ones((1, 1), np.float32)}, "fp8")


def test_mask_iou_known_values():
    ref = np.full((2, 4, 4), -1.0)
    cand = ref.copy()
    ref[0, :2, :] = 1.0  # 8 px
    cand[0, :1, :] = 1.0  # 4 px inside
    np.testing.assert_allclose(mask_iou(ref, cand), [0.5, 1.0])  # second pair: both empty


def test_mask_iou_enters_the_verdict():
    def ref(inputs):
        return {"masks": inputs["m"]}

    def flipped(inputs):
        return {"masks": -inputs["m"]}

    report = verify_parity(
        ref,
        flipped,
        {"m": np.full((1, 3, 8, 8), 0.001, np.float32)},
        Tolerance(atol=1.0, rtol=0, cosine_min=-1.0, mask_iou_min=0.9),
        mask_outputs=("masks",),
    )
    assert report.outputs[0].mask_iou == 0.0
    assert not report.passed


def test_shape_or_name_mismatch_is_an_export_error():
    with pytest.raises(ExportError, match="shape"):
        verify_parity(
            _reference, lambda f: {"y": np.zeros(3), "logits": np.zeros((3, 4))}, {"x": np.ones((3, 4))}, "fp32"
        )
    with pytest.raises(ExportError, match="no output 'logits'"):
        verify_parity(_reference, lambda f: {"y": 2 * f["x"]}, {"x": np.ones((3, 4))}, "fp32")
