"""SAM-MIL training pieces on small hand-made bags: SG2M ratios, pseudo-bags, consistency, objectives."""

import math

import numpy as np
import pytest
import torch

from sammil_deploy.mil.config import MaskConfig, ModelConfig, SamMilConfig
from sammil_deploy.mil.consistency import consistency_loss
from sammil_deploy.mil.data import BagTensors
from sammil_deploy.mil.masking import mask_ratio_for_area, select_kept
from sammil_deploy.mil.model import build_model
from sammil_deploy.mil.objective import bag_loss
from sammil_deploy.mil.pseudobags import pseudo_bag_indices


def direct_consistency(a: np.ndarray, cat: np.ndarray) -> float:
    """Eq. 12 as the official code: O(N^2) double loop over same-category pairs."""
    total, members = 0.0, 0
    for c in np.unique(cat):
        idx = np.nonzero(cat == c)[0]
        if len(idx) < 2:
            continue
        for i in idx:
            total += math.sqrt(sum((a[i] - a[j]) ** 2 for j in idx))
            members += 1
    return total / members if members else 0.0


def test_sg2m_drops_floor_n_r_per_category_and_keeps_group_tokens():
    areas = [1, 800, 5000, 20000]
    counts = [40, 40, 60, 60]
    area = torch.tensor(sum(([a] * n for a, n in zip(areas, counts, strict=True)), []) + [0] * 7)
    is_group = torch.zeros(len(area), dtype=torch.bool)
    is_group[-7:] = True
    cfg = MaskConfig()
    kept = select_kept(area, is_group, cfg, generator=torch.Generator().manual_seed(0))
    for a, n in zip(areas, counts, strict=True):
        r = 0.9 / (1.0 + math.exp(-0.0005 * (a - 5000)))
        assert int((area[kept] == a).sum()) == n - math.floor(n * r)
    assert bool(is_group[kept].sum() == 7)
    assert [int((area[kept] == a).sum()) for a in areas] == [38, 37, 33, 7]  # 40-2, 40-3, 60-27, 60-53
    assert torch.equal(kept, torch.sort(kept).values)


@pytest.mark.parametrize(("ratio_fn", "expected"), [("constant", 0.6), ("linear", 0.6 * 0.25)])
def test_other_ratio_functions(ratio_fn, expected):
    cfg = MaskConfig(ratio_fn=ratio_fn, mask_ratio=0.6, linear_area_px=8000)
    assert float(mask_ratio_for_area(torch.tensor([2000]), cfg)[0]) == pytest.approx(expected)
    assert float(mask_ratio_for_area(torch.tensor([10**6]), cfg)[0]) == pytest.approx(0.6)


def test_low_attention_selection_drops_the_lowest_scores():
    area = torch.tensor([20000] * 10 + [0, 0])
    is_group = torch.tensor([False] * 10 + [True, True])
    scores = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5, 0.05, 0.0, 0.0])
    kept = select_kept(area, is_group, MaskConfig(selection="low_attention"), scores=scores)
    n_drop = math.floor(10 * 0.9 / (1 + math.exp(-0.0005 * 15000)))
    assert sorted(kept.tolist()) == sorted(
        torch.argsort(scores[:10], descending=True)[: 10 - n_drop].tolist() + [10, 11]
    )


def test_random_ablations():
    is_group = torch.tensor([False] * 90 + [True] * 10)
    g = torch.Generator().manual_seed(1)
    spare = select_kept(None, is_group, MaskConfig(strategy="random_non_group", mask_ratio=0.5), generator=g)
    assert int(is_group[spare].sum()) == 10
    assert len(spare) == 10 + 45
    everything = select_kept(None, is_group, MaskConfig(strategy="random", mask_ratio=0.5), generator=g)
    assert len(everything) == 50
    assert len(select_kept(None, is_group, MaskConfig(strategy="none"))) == 100


@pytest.mark.parametrize(("n", "m"), [(103, 5), (10, 3), (3, 5), (5, 5)])
def test_pseudo_bags_partition_tokens(n, m):
    bags = pseudo_bag_indices(n, m, generator=torch.Generator().manual_seed(0))
    assert len(bags) == min(n, m)
    assert sorted(torch.cat(bags).tolist()) == list(range(n))
    assert all(len(b) == n // min(n, m) for b in bags[:-1])
    assert len(bags[-1]) == n // min(n, m) + n % min(n, m)


def test_consistency_zero_when_attention_equal_within_categories():
    cat = torch.tensor([0, 0, 0, 1, 1, 5000, 5000, 5000, 5000, 7])
    a = torch.tensor([0.05, 0.05, 0.05, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05])
    for method in ("moments", "pairwise"):
        assert float(consistency_loss(a, cat, method=method)) == pytest.approx(0.0, abs=1e-9)


def test_consistency_matches_direct_formula_and_grows_with_spread():
    rng = np.random.default_rng(0)
    cat = rng.choice([0, 1, 300, 5000, 9], size=60)
    cat[-1] = 123456  # a singleton category is ignored
    base = np.full(60, 1 / 60)
    losses = []
    for spread in (0.0, 0.002, 0.004, 0.008):
        a = base + spread * rng.normal(size=60)
        expected = direct_consistency(a, cat)
        t = torch.tensor(a, dtype=torch.float64)
        for method, chunk in (("moments", 2048), ("pairwise", 7), ("pairwise", 4096)):
            got = float(consistency_loss(t, torch.tensor(cat), method=method, chunk_rows=chunk))
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)
        losses.append(expected)
    assert losses[0] == 0.0
    assert losses[1] < losses[2] < losses[3]


def test_consistency_gradient_is_finite_at_equal_attention():
    a = torch.full((6,), 1 / 6, requires_grad=True)
    consistency_loss(a, torch.tensor([0, 0, 0, 1, 1, 1])).backward()
    assert torch.isfinite(a.grad).all()


def test_consistency_handles_large_bags_in_linear_memory():
    a = torch.softmax(torch.randn(200_000), 0)
    cat = torch.randint(0, 50, (200_000,))
    assert float(consistency_loss(a, cat)) > 0


def _bag(n=40, groups=4, dim=8, label=1):
    torch.manual_seed(0)
    area = torch.tensor([1000] * 10 + [30000] * (n - 10) + [0] * groups)
    is_group = torch.zeros(n + groups, dtype=torch.bool)
    is_group[n:] = True
    return BagTensors("s", torch.randn(n + groups, dim), label, is_group, area)


def test_paper_objective_has_all_terms_and_official_has_no_masking_or_consistency():
    model = build_model(ModelConfig(in_dim=8, embed_dim=16, attn_dim=8, dropout=0.0)).train()
    bag = _bag()
    paper = bag_loss(model, bag, SamMilConfig(), generator=torch.Generator().manual_seed(0))
    assert set(paper.parts) == {"cls", "pseudo", "con", "kept_fraction"}
    assert float(paper.total.detach()) == pytest.approx(
        paper.parts["cls"] + 0.5 * paper.parts["pseudo"] + 1000 * paper.parts["con"], rel=1e-5
    )
    assert paper.parts["kept_fraction"] < 1.0
    official = bag_loss(model, bag, SamMilConfig(objective="official"), generator=torch.Generator().manual_seed(0))
    assert set(official.parts) == {"cls", "pseudo"}
    # Same pseudo-bag draw (same seed): total = CE(last) + 0.5 * mean CE.
    expected = official.parts["cls"] + 0.5 * official.parts["pseudo"]
    assert float(official.total.detach()) == pytest.approx(expected, rel=1e-5)
    # The official objective is exactly 1.1 CE(last) + 0.1 sum of the others; check by recomputation.
    g = torch.Generator().manual_seed(0)
    ces = []
    with torch.no_grad():
        h = model.embed(bag.tokens)
        for rows in pseudo_bag_indices(len(bag.tokens), 5, generator=g):
            logits, _ = model.pool(h[rows])
            ces.append(float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([1]))))
    assert float(official.total.detach()) == pytest.approx(1.1 * ces[-1] + 0.1 * sum(ces[:-1]), rel=1e-5)


def test_plain_objective_is_cross_entropy_of_the_whole_bag():
    model = build_model(ModelConfig(in_dim=8, embed_dim=16, attn_dim=8, dropout=0.0)).eval()
    bag = _bag()
    cfg = SamMilConfig(group_tokens=False, masking=MaskConfig(strategy="none"), pseudo_bags=0, alpha=0, beta=0)
    terms = bag_loss(model, bag, cfg, generator=torch.Generator())
    with torch.no_grad():
        logits, _ = model(bag.tokens)
    assert float(terms.total.detach()) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([1])))
    )
