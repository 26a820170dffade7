"""Patch reading for DataLoaders: one slide handle per worker process, opened lazily, never pickled."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sammil_deploy.errors import PatchingError
from sammil_deploy.slide import SlideReader, open_slide


class PatchDataset(Dataset):
    """Square patches of one slide, read on demand and passed through ``transform``.

    The slide is opened on first access in each process (the DataLoader's workers, or the caller's process
    with ``num_workers=0``); handles are dropped when the dataset is pickled and reopened after a fork, so
    no two processes ever share one.

    Args:
        slide_path: Slide file.
        coords_level0_xy: (N, 2) int top-left corners in level-0 pixels.
        patch_size_level0_px: Patch side in level-0 pixels (only needed without ``read_size_px``).
        patch_level: Level to read at.
        read_size_px: Side read at ``patch_level`` (a grid's ``read_size_px``); default
            ``round(patch_size_level0_px / downsample(patch_level))``.
        transform: Maps an (H, W, 3) uint8 patch to what a DataLoader batches (e.g. a (3, S, S) tensor).
        mpp: Optional mpp override passed to :func:`open_slide` (geometry only; reads do not need it).
        reader: Reader name for :func:`open_slide` (``auto``, ``openslide``, ``tiled``).

    Items are ``(transform(patch), row)``, so batches carry their row indices.
    """

    def __init__(
        self,
        slide_path: Path | str,
        coords_level0_xy: np.ndarray,
        patch_size_level0_px: int | None,
        patch_level: int,
        transform: Callable[[np.ndarray], Any],
        *,
        read_size_px: int | None = None,
        mpp: float | None = None,
        reader: str = "auto",
    ) -> None:
        coords = np.asarray(coords_level0_xy)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise PatchingError(f"{Path(slide_path).name}: coords must be (N, 2) level-0 x, y; got {coords.shape}")
        if patch_size_level0_px is None and read_size_px is None:
            raise PatchingError(f"{Path(slide_path).name}: give the patch size at level 0 or the read size")
        for what, px in (("patch size", patch_size_level0_px), ("read size", read_size_px)):
            if px is not None and px <= 0:
                raise PatchingError(f"{Path(slide_path).name}: {what} must be > 0 px, got {px}")
        self.slide_path = Path(slide_path)
        self.coords_level0_xy = coords.astype(np.int64, copy=False)
        self.patch_size_level0_px = None if patch_size_level0_px is None else int(patch_size_level0_px)
        self.patch_level = int(patch_level)
        self.transform = transform
        self.mpp = mpp
        self.reader = reader
        self._reader: SlideReader | None = None
        self._reader_pid: int | None = None
        self._read_size_px = read_size_px

    def __len__(self) -> int:
        return int(self.coords_level0_xy.shape[0])

    def __getitem__(self, row: int) -> tuple[Any, int]:
        reader = self._open()
        x, y = self.coords_level0_xy[row]
        size = self._read_size_px
        patch = reader.read_region((int(x), int(y)), self.patch_level, (size, size))
        return self.transform(patch), row

    def _open(self) -> SlideReader:
        pid = os.getpid()
        if self._reader is None or self._reader_pid != pid:
            # After a fork the inherited handle belongs to the parent: leave it alone and open our own.
            reader = open_slide(self.slide_path, reader=self.reader, mpp=self.mpp)
            info = reader.info
            if not 0 <= self.patch_level < info.level_count:
                reader.close()
                raise PatchingError(
                    f"{self.slide_path.name}: patch level {self.patch_level} does not exist "
                    f"(levels 0..{info.level_count - 1})"
                )
            if self._read_size_px is None:
                downsample = info.level_downsamples[self.patch_level]
                self._read_size_px = max(1, round(self.patch_size_level0_px / downsample))
            self._reader, self._reader_pid = reader, pid
        return self._reader

    def close(self) -> None:
        """Close this process's slide handle (workers' handles close when the workers exit)."""
        if self._reader is not None and self._reader_pid == os.getpid():
            self._reader.close()
        self._reader = self._reader_pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = state["_reader_pid"] = None
        return state


def make_patch_loader(
    dataset: PatchDataset,
    *,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    persistent: bool = True,
    prefetch_factor: int = 4,
) -> DataLoader:
    """Ordered DataLoader over ``dataset``: ``num_workers`` reader processes, pinned batches when asked.

    With ``persistent`` the workers (and their slide handles) live as long as the loader, so repeated passes
    pay the start-up once; a single pass is better served with ``persistent=False``.
    """
    workers = max(0, int(num_workers))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=persistent and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )
