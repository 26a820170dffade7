"""Bags from any source (import-bags), the classical-MIL recipe, and the small-cohort selection protocol."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sammil_deploy.cli.app import app
from sammil_deploy.errors import ConfigError, MissingDependencyError
from sammil_deploy.features.store import read_bag
from sammil_deploy.mil.bag_import import import_bags, read_instance_table
from sammil_deploy.mil.checkpoint import load_checkpoint
from sammil_deploy.mil.evaluate import summarise_folds
from sammil_deploy.mil.synthetic import classical_mil_table

REPO = Path(__file__).resolve().parents[1]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in r) for r in [header, *rows]) + "\n")
    return path


def test_csv_and_npz_import_to_the_same_feature_files(tmp_path):
    ids, labels, x = classical_mil_table(n_bags=6, dim=5, seed=3)
    header = ["name", "bag_id", *[f"f{j}" for j in range(5)], "label"]
    rows = [[f"inst{i}", b, *row.tolist(), y] for i, (b, y, row) in enumerate(zip(ids, labels, x, strict=True))]
    csv_path = _write_csv(tmp_path / "t.csv", header, rows)
    np.savez(tmp_path / "t.npz", features=x, bag_id=ids, label=labels)
    a = import_bags(read_instance_table(csv_path, ignore_columns=["name"]), tmp_path / "a")
    import_bags(read_instance_table(tmp_path / "t.npz"), tmp_path / "b")
    assert (a.n_bags, a.n_instances, a.dim) == (6, len(ids), 5)
    assert a.class_counts == {"0": 3, "1": 3}
    assert (tmp_path / "a" / "labels.csv").read_text() == (tmp_path / "b" / "labels.csv").read_text()
    for bag_id in np.unique(ids):
        fa, fb = read_bag(tmp_path / "a" / f"{bag_id}.h5"), read_bag(tmp_path / "b" / f"{bag_id}.h5")
        np.testing.assert_array_equal(fa.features, fb.features)
        np.testing.assert_allclose(fa.features, x[ids == bag_id], rtol=1e-6)  # instance order kept
        assert fa.context is None
    assert not (tmp_path / "a.partial").exists()


@pytest.mark.parametrize(
    ("rows", "kwargs", "match"),
    [
        ([["b1", "0", "1.0"], ["b1", "1", "2.0"]], {}, r"bag 'b1' has instances with different labels"),
        ([["b1", "0", "x"]], {}, r"column 'f0' is not numeric \(row 1: 'x'\).*--ignore f0"),
        ([["b1", "0", "nan"]], {}, r"non-finite feature value in row 1, column 'f0'"),
        ([["b/1", "0", "1.0"]], {}, r"file-name safe"),
        ([["b1", "", "1.0"]], {}, r"empty label in row 1"),
        ([["b1", "0", "1.0"]], {"bag_column": "molecule"}, r"no column 'molecule'.*--bag-column"),
        ([["b1", "0", "1.0"]], {"ignore_columns": ["zz"]}, r"--ignore names columns that do not exist: zz"),
    ],
)
def test_bad_tables_are_refused_with_the_file_and_the_fix(tmp_path, rows, kwargs, match):
    path = _write_csv(tmp_path / "bad.csv", ["bag_id", "label", "f0"], rows)
    with pytest.raises(ConfigError, match=match) as err:
        read_instance_table(path, **kwargs)
    assert str(path) in str(err.value)


def test_other_bad_inputs(tmp_path):
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(ConfigError, match="unknown table format"):
        read_instance_table(tmp_path / "x.xlsx")
    np.savez(tmp_path / "obj.npz", features=np.zeros((2, 3)), bag_id=np.array(["a", 1], dtype=object), label=[0, 0])
    with pytest.raises(ConfigError, match="without pickle"):
        read_instance_table(tmp_path / "obj.npz")
    np.savez(tmp_path / "keys.npz", feats=np.zeros((2, 3)))
    with pytest.raises(ConfigError, match=r"missing arrays \['features', 'bag_id', 'label'\]"):
        read_instance_table(tmp_path / "keys.npz")
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=r"sammil-deploy\[parquet\]"):
            read_instance_table(tmp_path / "t.parquet")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    table = read_instance_table(_write_csv(tmp_path / "ok.csv", ["bag_id", "label", "f0"], [["b1", "0", "1"]]))
    with pytest.raises(ConfigError, match="--overwrite"):
        import_bags(table, out)
    assert (out / "keep.txt").exists()


def test_parquet_import_when_pyarrow_is_installed(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    ids, labels, x = classical_mil_table(n_bags=4, dim=3, seed=1)
    columns = {"bag_id": ids.tolist(), "label": labels.tolist(), **{f"f{j}": x[:, j].tolist() for j in range(3)}}
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    done = import_bags(read_instance_table(tmp_path / "t.parquet"), tmp_path / "out")
    assert (done.n_bags, done.dim) == (4, 3)


def test_summary_reports_sem_and_sem_over_repeats():
    folds = [
        {"fold": f"repeat{r}_fold{k}", "auc": a, "accuracy": a, "accuracy_at_0.5": a, "f1": a, "f1_at_0.5": a}
        for r, values in enumerate(([0.8, 1.0], [0.6, 0.6]))
        for k, a in enumerate(values)
    ]
    ms = summarise_folds(folds)["accuracy"]
    assert ms["mean"] == pytest.approx(0.75)
    assert ms["std"] == pytest.approx(np.std([0.8, 1.0, 0.6, 0.6], ddof=1))
    assert ms["sem"] == pytest.approx(ms["std"] / 2)
    assert ms["sem_repeats"] == pytest.approx(np.std([0.9, 0.6], ddof=1) / math.sqrt(2))
    assert "sem_repeats" not in summarise_folds([{**f, "fold": f"fold{i}"} for i, f in enumerate(folds)])["auc"]


def test_import_bags_then_mil_benchmark_recipe_end_to_end(tmp_path):
    """The documented path, small: synthetic MUSK-shaped table → import-bags → train with the recipe."""
    runner = CliRunner()
    table = tmp_path / "musk.csv"
    res = runner.invoke(app, ["make-mil-table", "--out", str(table), "--bags", "24", "--signal", "3"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["import-bags", str(table), "--out", str(tmp_path / "bags"), "--json"])
    assert res.exit_code == 0, res.output
    imported = json.loads(res.stdout)
    assert imported["dim"] == 166
    assert 2 <= imported["bag_size"][0] <= imported["bag_size"][1] <= 40
    out = tmp_path / "run"
    args = ["train", "--features", str(tmp_path / "bags"), "--labels", imported["labels_csv"], "--out", str(out)]
    args += ["--config", str(REPO / "training" / "mil_benchmarks.toml"), "--folds", "3", "--repeats", "2"]
    args += ["--epochs", "3"]
    small = tmp_path / "inner2.toml"  # same recipe, 2 inner folds to stay fast
    small.write_text(
        (REPO / "training" / "mil_benchmarks.toml").read_text().replace("inner_folds = 5", "inner_folds = 2")
    )
    args[args.index(str(REPO / "training" / "mil_benchmarks.toml"))] = str(small)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "mean ± SEM" in res.stdout
    assert "acc (0.5)" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["folds"]) == 6
    assert {f["selection"] for f in summary["folds"]} == {"inner_cv"}
    assert all(0 <= f["best_epoch"] < 3 for f in summary["folds"])
    assert all(f["epochs_run"] == 2 * 3 + f["best_epoch"] + 1 for f in summary["folds"])
    assert set(summary["mean_std"]["accuracy"]) >= {"mean", "std", "sem", "sem_repeats"}
    ckpt = load_checkpoint(out / "repeat0_fold0.safetensors", feature_dim=166)
    assert ckpt.model_config.embed_hidden == 256
    assert ckpt.meta.threshold_rule == "youden"
    assert 0.0 < ckpt.meta.threshold < 1.0
    assert (out / "repeat0_fold0" / "inner1" / "log.csv").exists()
    fixed = [*args[: args.index("--out") + 1], str(tmp_path / "fixed"), *args[args.index("--out") + 2 :]]
    fixed += ["--selection", "fixed", "--threshold", "0.5", "--repeats", "1", "--json"]
    res = runner.invoke(app, fixed)
    assert res.exit_code == 0, res.output
    folds = json.loads(res.stdout)["folds"]
    assert [(f["selection"], f["best_epoch"], f["threshold_rule"]) for f in folds] == [("fixed", 2, "0.5")] * 3


def test_selection_modes_resolve_and_fixed_needs_an_explicit_threshold():
    from sammil_deploy.mil.config import load_recipe
    from sammil_deploy.mil.selection import resolve_selection

    with pytest.raises(ConfigError, match="--threshold 0.5"):
        resolve_selection(load_recipe(overrides={"train.selection": "fixed"}), 10)
    fixed = load_recipe(overrides={"train.selection": "fixed", "train.threshold": "0.5"})
    assert resolve_selection(fixed, 10) == "fixed"
    auto = load_recipe(overrides={"train.selection": "auto", "train.min_val_bags": 12})
    assert resolve_selection(auto, 8) == "inner_cv"
    assert resolve_selection(auto, 12) == "validation"
