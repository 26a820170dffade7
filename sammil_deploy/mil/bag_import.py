"""Bags that are not slides: a table of (bag id, label, instance features) → the feature-file layout.

One row per instance. CSV and NPZ need only the base install; Parquet needs ``pyarrow`` (the ``parquet``
extra). The output folder gets ``<bag_id>.h5`` per bag (``features`` (N, D) float32, ``coords`` = (row, 0) as
instance index, no spatial context) and ``labels.csv`` (``slide_id,label``), which ``sammil-deploy train
--features DIR --labels DIR/labels.csv`` reads like any slide cohort (AB-MIL, mean, max; SAM-MIL parts need
segments and are refused with a clear message).

Everything is read and validated before anything is written; the folder appears complete or not at all.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sammil_deploy.errors import ConfigError
from sammil_deploy.io_atomic import atomic_dir

TABLE_FORMATS = ("csv", "parquet", "npz")
_SAFE_ID = re.compile(r"[A-Za-z0-9._+-]+")
NPZ_KEYS = ("features", "bag_id", "label")


@dataclass(frozen=True)
class InstanceTable:
    """A validated table: ``features`` (n, D) float32 and, per row, its bag id and label (as text)."""

    source: Path
    bag_ids: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    feature_columns: tuple[str, ...]


@dataclass(frozen=True)
class ImportedBags:
    """What ``import_bags`` wrote: the folder, its labels CSV, and counts for the summary."""

    out_dir: Path
    labels_csv: Path
    n_bags: int
    n_instances: int
    dim: int
    class_counts: dict[str, int]
    bag_size_min: int
    bag_size_max: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``import-bags --json`` prints)."""
        return {
            "out_dir": str(self.out_dir),
            "labels_csv": str(self.labels_csv),
            "bags": self.n_bags,
            "instances": self.n_instances,
            "dim": self.dim,
            "classes": self.class_counts,
            "bag_size": [self.bag_size_min, self.bag_size_max],
        }


def read_instance_table(
    path: Path,
    *,
    bag_column: str = "bag_id",
    label_column: str = "label",
    ignore_columns: Sequence[str] = (),
) -> InstanceTable:
    """Read a CSV / Parquet / NPZ instance table and check it.

    CSV and Parquet: a ``bag_column``, a ``label_column``, and numeric feature columns (every other column
    except ``ignore_columns``). NPZ: arrays ``features`` (n, D), ``bag_id`` (n,) and ``label`` (n,).

    Raises:
        ConfigError: Unknown format, missing columns, non-numeric or non-finite features, a bag with more than
            one label, unsafe bag ids; the message names the file, the row or column, and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such table; pass a .csv, .parquet or .npz file with one row per instance")
    fmt = _format_of(path)
    if fmt == "npz":
        table = _read_npz(path)
    else:
        header, columns = _read_csv(path) if fmt == "csv" else _read_parquet(path)
        table = _from_columns(path, header, columns, bag_column, label_column, set(ignore_columns))
    _validate(table)
    return table


def import_bags(table: InstanceTable, out_dir: Path, *, overwrite: bool = False) -> ImportedBags:
    """Write one ``<bag_id>.h5`` per bag and ``labels.csv`` into ``out_dir`` (atomically, as a whole folder).

    Raises:
        ConfigError: ``out_dir`` exists and is not empty (without ``overwrite``).
    """
    from sammil_deploy.features.bag import FeatureBag
    from sammil_deploy.features.store import write_bag

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir}: folder exists and is not empty; choose a new --out or pass --overwrite")
    order = np.argsort(table.bag_ids, kind="stable")
    ids, starts = np.unique(table.bag_ids[order], return_index=True)
    ends = np.r_[starts[1:], len(order)]
    sizes, labels = [], {}
    with atomic_dir(out_dir) as tmp:
        for bag_id, start, end in zip(ids.tolist(), starts, ends, strict=True):
            rows = order[start:end]
            n = len(rows)
            coords = np.stack([np.arange(n), np.zeros(n, dtype=np.int64)], axis=1).astype(np.int64)
            attrs = {"encoder": "tabular", "source_table": str(table.source), "coords": "instance index"}
            write_bag(tmp / f"{bag_id}.h5", FeatureBag(bag_id, coords, table.features[rows], 1, 0, None, attrs))
            labels[bag_id] = str(table.labels[rows[0]])
            sizes.append(n)
        with open(tmp / "labels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["slide_id", "label"])
            writer.writerows(sorted(labels.items()))
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return ImportedBags(
        out_dir, out_dir / "labels.csv", len(ids), len(table.bag_ids), table.features.shape[1],
        dict(sorted(counts.items())), min(sizes), max(sizes),
    )  # fmt: skip


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    fmt = {"tsv": "csv", "pq": "parquet"}.get(suffix, suffix)
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"{path}: unknown table format {path.suffix!r}; use .csv, .parquet or .npz")
    return fmt


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    if len(rows) < 2:
        raise ConfigError(f"{path}: needs a header row and at least one instance row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ConfigError(f"{path}: line {i} has {len(row)} fields but the header has {len(header)}; fix the row")
    return header, [list(col) for col in zip(*body, strict=True)]


def _read_parquet(path: Path) -> tuple[list[str], list[list[str]]]:
    from sammil_deploy._deps import require

    pq = require("pyarrow.parquet", extra="parquet")
    table = pq.read_table(path)
    return list(table.column_names), [table.column(c).to_pylist() for c in table.column_names]


def _from_columns(
    path: Path, header: list[str], columns: list[list], bag_col: str, label_col: str, ignore: set[str]
) -> InstanceTable:
    for name, flag in ((bag_col, "--bag-column"), (label_col, "--label-column")):
        if name not in header:
            raise ConfigError(
                f"{path}: no column {name!r} (columns: {', '.join(header[:8])}{'...' if len(header) > 8 else ''}); "
                f"name it with {flag}"
            )
    unknown = sorted(ignore - set(header))
    if unknown:
        raise ConfigError(f"{path}: --ignore names columns that do not exist: {', '.join(unknown)}")
    feature_cols = [h for h in header if h not in {bag_col, label_col} | ignore]
    if not feature_cols:
        raise ConfigError(f"{path}: no feature columns besides {bag_col!r} and {label_col!r}")
    by_name = dict(zip(header, columns, strict=True))
    features = np.empty((len(columns[0]), len(feature_cols)), dtype=np.float32)
    for j, name in enumerate(feature_cols):
        try:
            features[:, j] = np.asarray(by_name[name], dtype=np.float64)
        except (TypeError, ValueError):
            bad = next(i for i, v in enumerate(by_name[name]) if not _is_number(v))
            raise ConfigError(
                f"{path}: column {name!r} is not numeric (row {bad + 1}: {by_name[name][bad]!r}); drop it with "
                f"--ignore {name} or fix the value"
            ) from None
    bag_ids = np.asarray([str(v).strip() for v in by_name[bag_col]])
    labels = np.asarray([str(v).strip() for v in by_name[label_col]])
    return InstanceTable(path, bag_ids, labels, features, tuple(feature_cols))


def _read_npz(path: Path) -> InstanceTable:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in NPZ_KEYS if k not in data.files]
            if missing:
                raise ConfigError(
                    f"{path}: missing arrays {missing} (has {data.files}); save features (n, D), bag_id (n,) and "
                    "label (n,) with numpy.savez"
                )
            features, bag_ids, labels = (data[k] for k in NPZ_KEYS)
    except ValueError as err:  # object arrays need pickle, which we never load
        raise ConfigError(
            f"{path}: unreadable without pickle ({err}); store bag_id and label as str or int arrays"
        ) from None
    if features.ndim != 2 or bag_ids.shape != (len(features),) or labels.shape != (len(features),):
        raise ConfigError(
            f"{path}: features must be (n, D) with bag_id and label (n,), got {features.shape}, {bag_ids.shape}, "
            f"{labels.shape}"
        )
    if not np.issubdtype(features.dtype, np.number):
        raise ConfigError(f"{path}: features must be numeric, got dtype {features.dtype}")
    columns = tuple(f"f{j}" for j in range(features.shape[1]))
    return InstanceTable(path, bag_ids.astype(str), labels.astype(str), features.astype(np.float32), columns)


def _validate(table: InstanceTable) -> None:
    path = table.source
    if len(table.bag_ids) == 0:
        raise ConfigError(f"{path}: the table has no instance rows")
    finite = np.isfinite(table.features)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ConfigError(
            f"{path}: non-finite feature value in row {row + 1}, column {table.feature_columns[col]!r}; impute or "
            "drop those rows"
        )
    for name, values in (("bag id", table.bag_ids), ("label", table.labels)):
        empty = np.flatnonzero(np.char.str_len(values.astype(str)) == 0)
        if len(empty):
            raise ConfigError(f"{path}: empty {name} in row {empty[0] + 1}; every instance needs one")
    bad = [b for b in np.unique(table.bag_ids).tolist() if not _SAFE_ID.fullmatch(b)]
    if bad:
        raise ConfigError(
            f"{path}: bag ids must be file-name safe (letters, digits, . _ + -), e.g. {bad[0]!r}; rename them"
        )
    order = np.argsort(table.bag_ids, kind="stable")
    ids, labels = table.bag_ids[order], table.labels[order]
    mixed = np.flatnonzero((ids[1:] == ids[:-1]) & (labels[1:] != labels[:-1]))
    if len(mixed):
        bag = str(ids[mixed[0]])
        found = sorted(set(table.labels[table.bag_ids == bag].tolist()))
        raise ConfigError(f"{path}: bag {bag!r} has instances with different labels {found}; one label per bag")


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
