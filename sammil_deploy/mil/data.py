"""Training data: labels CSV, cross-validation splits, and bags as tensors (lazy or cached).

Labels CSV: ``slide_id,label`` with or without that header; labels are class names or integers. Splits CSV:
long format ``slide_id,fold,split[,repeat]`` (split in train/val/test), or CLAM-style ``train,val,test``
columns (one file per fold; pass a folder of ``splits_<k>.csv``). Without a splits file, stratified K-fold
splits with repeats are generated, and each training fold gives up a stratified validation share.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sammil_deploy.errors import ConfigError, FeatureStoreError
from sammil_deploy.features.bag import FeatureBag

log = logging.getLogger(__name__)

_ID_HEADERS = ("slide_id", "slide", "case_id", "patient_id", "id", "slide_name")


@dataclass(frozen=True)
class Labels:
    """Slide labels: ``y[i]`` is the class index of ``slide_ids[i]``; ``class_names[k]`` names class k."""

    slide_ids: tuple[str, ...]
    y: np.ndarray
    class_names: tuple[str, ...]

    def as_dict(self) -> dict[str, int]:
        """slide_id -> class index."""
        return dict(zip(self.slide_ids, self.y.tolist(), strict=True))


@dataclass(frozen=True)
class Split:
    """One cross-validation fold: disjoint train / val / test slide ids."""

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class BagTensors:
    """One slide as the training loop sees it.

    Attributes:
        tokens: (T, D) float32: N patch rows, then G group tokens when enabled.
        label: Class index.
        is_group: (T,) bool, True on group tokens.
        relative_area: (T,) int64 official segment category (0 = group token, 1 = no mask), or None when the bag
            has no spatial context.
    """

    slide_id: str
    tokens: torch.Tensor
    label: int
    is_group: torch.Tensor
    relative_area: torch.Tensor | None

    def to(self, device: torch.device) -> BagTensors:
        """The same bag with its tensors on ``device``."""
        area = None if self.relative_area is None else self.relative_area.to(device)
        return BagTensors(
            self.slide_id, self.tokens.to(device, non_blocking=True), self.label, self.is_group.to(device), area
        )


def read_labels(path: Path, *, class_names: Sequence[str] = ()) -> Labels:
    """Read a labels CSV (header ``slide_id,label`` optional).

    Class order: ``class_names`` if given; else integer labels in numeric order, or names sorted
    alphabetically (TCGA-NSCLC: LUAD = 0, LUSC = 1, as in the official code).

    Raises:
        ConfigError: Missing file, malformed rows, duplicate slides, unknown class, or fewer than 2 classes.
    """
    rows = _read_rows(path)
    header = [c.strip().lower() for c in rows[0]]
    if header[0] in _ID_HEADERS or "label" in header:
        id_col = next((header.index(h) for h in _ID_HEADERS if h in header), 0)
        label_col = header.index("label") if "label" in header else 1
        rows = rows[1:]
    else:
        id_col, label_col = 0, 1
    ids, raw = [], []
    for line, row in enumerate(rows, start=2):
        if len(row) <= max(id_col, label_col) or not row[id_col].strip() or not row[label_col].strip():
            raise ConfigError(f"{path}:{line}: expected 'slide_id,label', got {row!r}")
        ids.append(row[id_col].strip())
        raw.append(row[label_col].strip())
    dupes = sorted(s for s, n in Counter(ids).items() if n > 1)
    if dupes:
        raise ConfigError(f"{path}: slides listed more than once: {', '.join(dupes[:5])}")
    if class_names:
        names = tuple(class_names)
    elif all(re.fullmatch(r"-?\d+", r) for r in raw):
        names = tuple(str(v) for v in sorted({int(r) for r in raw}))
        raw = [str(int(r)) for r in raw]
    else:
        names = tuple(sorted(set(raw)))
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"{path}: labels {unknown[:5]} are not among the classes {list(names)}")
    if len(set(raw)) < 2:
        raise ConfigError(f"{path}: all {len(raw)} slides have the same label; training needs >= 2 classes")
    index = {n: i for i, n in enumerate(names)}
    return Labels(tuple(ids), np.array([index[r] for r in raw], dtype=np.int64), names)


def make_splits(
    labels: Labels, *, folds: int, repeats: int = 1, val_fraction: float = 0.2, seed: int = 2021
) -> list[Split]:
    """Stratified K-fold splits, ``repeats`` times with seeds ``seed + r``; validation carved from each train fold.

    Raises:
        ConfigError: If a class has fewer slides than folds.
    """
    counts = np.bincount(labels.y, minlength=len(labels.class_names))
    if counts.min() < folds:
        small = labels.class_names[int(counts.argmin())]
        raise ConfigError(f"class {small!r} has {counts.min()} slides, fewer than {folds} folds; lower --folds")
    ids = np.array(labels.slide_ids)
    splits = []
    for repeat in range(repeats):
        rng = np.random.default_rng(seed + repeat)
        fold_of = np.empty(len(ids), dtype=np.int64)
        offset = 0
        for c in range(len(labels.class_names)):
            members = rng.permutation(np.nonzero(labels.y == c)[0])
            fold_of[members] = (offset + np.arange(len(members))) % folds
            offset += len(members)
        for k in range(folds):
            test = np.nonzero(fold_of == k)[0]
            pool = np.nonzero(fold_of != k)[0]
            val = _stratified_take(pool, labels.y[pool], val_fraction, rng)
            train = np.setdiff1d(pool, val)
            name = f"fold{k}" if repeats == 1 else f"repeat{repeat}_fold{k}"
            splits.append(Split(name, tuple(ids[train]), tuple(ids[val]), tuple(ids[test])))
    return splits


def read_splits(path: Path, labels: Labels, *, val_fraction: float = 0.2, seed: int = 2021) -> list[Split]:
    """Read a long-format or CLAM-style splits CSV, or a folder of CLAM ``splits_<k>.csv``.

    A fold without validation slides gets a stratified ``val_fraction`` of its training slides.

    Raises:
        ConfigError: Unknown format, slides missing from the labels, overlapping or empty sets.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("splits_*.csv"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
        if not files:
            raise ConfigError(f"{path}: no splits_<k>.csv files in this folder")
        splits = [s for i, f in enumerate(files) for s in _read_split_file(f, f"fold{i}")]
    else:
        splits = _read_split_file(path, "fold0")
    known = set(labels.slide_ids)
    y = labels.as_dict()
    rng = np.random.default_rng(seed)
    out = []
    for s in splits:
        unknown = sorted((set(s.train) | set(s.val) | set(s.test)) - known)
        if unknown:
            raise ConfigError(f"{path}: {s.name} lists slides not in the labels CSV: {', '.join(unknown[:5])}")
        if (set(s.train) & set(s.test)) or (set(s.val) & (set(s.train) | set(s.test))):
            raise ConfigError(f"{path}: {s.name} has slides in more than one of train/val/test")
        if not s.train or not s.test:
            raise ConfigError(f"{path}: {s.name} has an empty train or test set")
        if not s.val:
            train = np.array(s.train)
            val_idx = _stratified_take(np.arange(len(train)), np.array([y[t] for t in train]), val_fraction, rng)
            log.info("%s: no validation slides; holding out %d training slides", s.name, len(val_idx))
            s = Split(s.name, tuple(np.delete(train, val_idx)), tuple(train[val_idx]), s.test)
        out.append(s)
    return out


def find_feature_files(features_dir: Path, slide_ids: Sequence[str]) -> dict[str, Path]:
    """Map each slide to ``<dir>/<slide_id>.h5`` (or ``<dir>/h5_files/<slide_id>.h5``).

    Raises:
        FeatureStoreError: If any slide has no feature file.
    """
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise FeatureStoreError(f"{features_dir}: feature folder not found")
    found, missing = {}, []
    for sid in slide_ids:
        for candidate in (features_dir / f"{sid}.h5", features_dir / "h5_files" / f"{sid}.h5"):
            if candidate.is_file():
                found[sid] = candidate
                break
        else:
            missing.append(sid)
    if missing:
        raise FeatureStoreError(
            f"{features_dir}: {len(missing)} of {len(slide_ids)} labelled slides have no <slide_id>.h5 "
            f"(e.g. {', '.join(missing[:3])}); extract them or remove them from the labels CSV"
        )
    return found


class BagDataset:
    """Bags of some slides as :class:`BagTensors`, read lazily from HDF5 or kept in memory.

    Args:
        sources: Per slide, a feature file path or an in-memory FeatureBag.
        labels: Class index per slide (same order).
        group_tokens: Append group tokens to the bag (Eq. 4).
        needs_context: Refuse bags without SAM context (group tokens, SG2M or consistency are on).
        cache: Keep loaded bags in memory.
        shared_cache: A dict shared between datasets (the folds of one run), keyed by slide id, so each bag is
            read once per run; implies ``cache``.
    """

    def __init__(
        self,
        sources: Sequence[Path | FeatureBag],
        labels: Sequence[int],
        *,
        group_tokens: bool,
        needs_context: bool,
        cache: bool = True,
        shared_cache: dict[str, BagTensors] | None = None,
    ) -> None:
        if len(sources) != len(labels):
            raise ValueError("sources and labels differ in length")
        self.sources = list(sources)
        self.labels = [int(v) for v in labels]
        self.group_tokens = group_tokens
        self.needs_context = needs_context
        self.cache = cache or shared_cache is not None
        self._cached: dict[str, BagTensors] = {} if shared_cache is None else shared_cache
        self._ids = self.slide_ids

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> BagTensors:
        key = self._ids[i]
        if key in self._cached and self._cached[key].label == self.labels[i]:
            return self._cached[key]
        item = self._load(i)
        if self.cache:
            self._cached[key] = item
        return item

    @property
    def slide_ids(self) -> list[str]:
        """Slide id of each item."""
        return [s.slide_id if isinstance(s, FeatureBag) else Path(s).stem for s in self.sources]

    def fingerprint(self) -> str:
        """sha256 of (slide id, label, file size or instance count) of every item: training-data provenance."""
        h = hashlib.sha256()
        for sid, label, src in zip(self.slide_ids, self.labels, self.sources, strict=True):
            size = src.n_patches if isinstance(src, FeatureBag) else Path(src).stat().st_size
            h.update(f"{sid},{label},{size}\n".encode())
        return h.hexdigest()

    def _load(self, i: int) -> BagTensors:
        src = self.sources[i]
        if isinstance(src, FeatureBag):
            bag = src
        else:
            from sammil_deploy.features.store import read_bag

            bag = read_bag(Path(src))
        if bag.context is None and self.needs_context:
            raise FeatureStoreError(
                f"{src if not isinstance(src, FeatureBag) else bag.slide_id}: the chosen training uses SAM "
                "context (group tokens, SG2M masking or consistency) but this bag has none; add segments "
                "(`sammil-deploy extract` with segmentation) or train with --model abmil / mean / max"
            )
        with_groups = self.group_tokens and bag.context is not None
        area = bag.relative_area(with_groups=with_groups) if bag.context is not None else None
        return BagTensors(
            slide_id=bag.slide_id,
            tokens=torch.from_numpy(np.ascontiguousarray(bag.tokens(with_groups=with_groups), dtype=np.float32)),
            label=self.labels[i],
            is_group=torch.from_numpy(bag.is_group_token(with_groups=with_groups)),
            relative_area=None if area is None else torch.from_numpy(area),
        )


def _stratified_take(pool: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Entries of ``pool`` drawn per class: round(n_c·fraction), at least 1 if the class has >= 2 members."""
    taken = []
    for c in np.unique(y):
        members = pool[y == c]
        n = int(round(len(members) * fraction))
        n = max(n, 1) if len(members) >= 2 else 0
        taken.append(rng.choice(members, size=min(n, len(members) - 1), replace=False))
    return np.sort(np.concatenate(taken)) if taken else pool[:0]


def _read_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{path}: not a readable CSV ({err})") from None
    if not rows:
        raise ConfigError(f"{path}: empty CSV")
    return rows


def _read_split_file(path: Path, default_name: str) -> list[Split]:
    rows = _read_rows(path)
    header = [c.strip().lower() for c in rows[0]]
    if {"slide_id", "fold", "split"} <= set(header):
        col = {h: header.index(h) for h in header}
        sets: dict[str, dict[str, list[str]]] = {}
        for line, row in enumerate(rows[1:], start=2):
            kind = row[col["split"]].strip().lower()
            kind = "val" if kind == "validation" else kind
            if kind not in ("train", "val", "test"):
                raise ConfigError(f"{path}:{line}: split must be train, val or test; got {kind!r}")
            fold = row[col["fold"]].strip()
            name = f"repeat{row[col['repeat']].strip()}_fold{fold}" if "repeat" in col else f"fold{fold}"
            sets.setdefault(name, {"train": [], "val": [], "test": []})[kind].append(row[col["slide_id"]].strip())
        return [Split(n, tuple(s["train"]), tuple(s["val"]), tuple(s["test"])) for n, s in sets.items()]
    if {"train", "test"} <= set(header):
        cols = {k: header.index(k) for k in ("train", "val", "test") if k in header}
        picked = {k: tuple(r[c].strip() for r in rows[1:] if c < len(r) and r[c].strip()) for k, c in cols.items()}
        return [Split(default_name, picked["train"], picked.get("val", ()), picked["test"])]
    raise ConfigError(f"{path}: unknown splits format; use columns slide_id,fold,split or CLAM's train,val,test")
