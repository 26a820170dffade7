"""Labels, splits and metrics of the training stage."""

import itertools

import numpy as np
import pytest

from sammil_deploy.errors import ConfigError, FeatureStoreError
from sammil_deploy.mil.data import BagDataset, find_feature_files, make_splits, read_labels, read_splits
from sammil_deploy.mil.metrics import classification_metrics, roc_auc, roc_auc_binary
from sammil_deploy.mil.synthetic import synthetic_bag
from sammil_deploy.mil.threshold import Threshold, probability_to_margin


def test_labels_with_and_without_header(tmp_path):
    with_header = tmp_path / "a.csv"
    with_header.write_text("slide_id,label\ns1,LUSC\ns2,LUAD\ns3,LUSC\n")
    labels = read_labels(with_header)
    assert labels.class_names == ("LUAD", "LUSC")
    assert labels.y.tolist() == [1, 0, 1]
    bare = tmp_path / "b.csv"
    bare.write_text("normal_001,0\ntumor_001,1\ntest_001,1\n")
    labels = read_labels(bare)
    assert labels.slide_ids == ("normal_001", "tumor_001", "test_001")
    assert labels.class_names == ("0", "1")
    assert read_labels(bare, class_names=["1", "0"]).y.tolist() == [1, 0, 0]


@pytest.mark.parametrize(
    ("text", "match"),
    [("s1,0\ns1,1\n", "more than once"), ("s1,0\ns2,0\n", "same label"), ("s1\n", "expected 'slide_id,label'")],
)
def test_bad_labels_are_refused(tmp_path, text, match):
    path = tmp_path / "l.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_labels(path)


def _labels(tmp_path, n=30, classes=2):
    path = tmp_path / "labels.csv"
    path.write_text("".join(f"s{i:02d},{i % classes}\n" for i in range(n)))
    return read_labels(path)


def test_generated_splits_are_stratified_disjoint_and_cover_every_slide(tmp_path):
    labels = _labels(tmp_path, n=31, classes=3)
    splits = make_splits(labels, folds=5, repeats=2, val_fraction=0.25, seed=7)
    assert len(splits) == 10
    y = labels.as_dict()
    for repeat in (splits[:5], splits[5:]):
        assert sorted(itertools.chain.from_iterable(s.test for s in repeat)) == sorted(labels.slide_ids)
    for s in splits:
        parts = [set(s.train), set(s.val), set(s.test)]
        assert sum(map(len, parts)) == 31
        assert len(set.union(*parts)) == 31
        for part in (s.val, s.test):
            assert len({y[i] for i in part}) == 3
    assert splits[0].test != splits[5].test
    assert make_splits(labels, folds=5, seed=7) == make_splits(labels, folds=5, seed=7)


def test_read_long_and_clam_splits(tmp_path):
    labels = _labels(tmp_path, n=12)
    long_csv = tmp_path / "splits.csv"
    rows = [f"s{i:02d},{f},{'test' if i % 3 == f else 'train'}" for f in range(3) for i in range(12)]
    long_csv.write_text("slide_id,fold,split\n" + "\n".join(rows) + "\n")
    splits = read_splits(long_csv, labels, val_fraction=0.25)
    assert [s.name for s in splits] == ["fold0", "fold1", "fold2"]
    assert all(len(s.val) == 2 and len(s.test) == 4 and len(s.train) == 6 for s in splits)
    clam = tmp_path / "clam"
    clam.mkdir()
    (clam / "splits_0.csv").write_text(",train,val,test\n0,s00,s01,s02\n1,s03,s04,s05\n2,s06,,s07\n3,s08,,\n")
    (s,) = read_splits(clam, labels)
    assert (s.train, s.val, s.test) == (("s00", "s03", "s06", "s08"), ("s01", "s04"), ("s02", "s05", "s07"))
    (clam / "splits_0.csv").write_text(",train,val,test\n0,s00,s01,zzz\n")
    with pytest.raises(ConfigError, match="not in the labels"):
        read_splits(clam, labels)


def test_missing_feature_files_and_missing_context_are_explained(tmp_path):
    (tmp_path / "a.h5").write_bytes(b"")
    with pytest.raises(FeatureStoreError, match="1 of 2 labelled slides"):
        find_feature_files(tmp_path, ["a", "b"])
    bag = synthetic_bag("plain", 1, np.random.default_rng(0), n_instances=20, dim=4)
    plain = type(bag)(bag.slide_id, bag.coords_level0_xy, bag.features, bag.patch_size_level0_px)
    with pytest.raises(FeatureStoreError, match="has none"):
        BagDataset([plain], [1], group_tokens=True, needs_context=True)[0]
    item = BagDataset([plain], [1], group_tokens=True, needs_context=False)[0]
    assert item.tokens.shape == (20, 4)
    assert item.relative_area is None
    item = BagDataset([bag], [1], group_tokens=True, needs_context=True)[0]
    assert item.tokens.shape == (20 + bag.context.n_groups, 4)
    assert int(item.is_group.sum()) == bag.context.n_groups
    assert (item.relative_area[item.is_group] == 0).all()


def test_auc_against_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc_auc_binary(y, s) == pytest.approx(expected)
    assert np.isnan(roc_auc_binary(np.ones(5), np.arange(5)))


def test_macro_auc_youden_and_metrics():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[y] * 0.7 + 0.1
    assert roc_auc(y, probs) == pytest.approx(1.0)
    m = classification_metrics(y, probs)
    assert (m["accuracy"], m["f1"]) == (1.0, 1.0)
    yb = np.array([0, 0, 0, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.6, 0.55, 0.7, 0.9])
    m = classification_metrics(yb, np.stack([1 - score, score], 1), threshold=Threshold(probability_to_margin(0.55)))
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(6 / 7)
