"""Reading patch batches from one slide: the job description, the open slide, the batch read (as CLAM resizes).

Used by the reader processes of :mod:`sammil_deploy.patching.reader_pool` and, without workers, in the calling
process. Light on purpose (numpy, PIL, the slide readers; no torch): spawned reader processes import it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class ReadJob:
    """What every patch of one slide needs: where to read and how to resize.

    Attributes:
        slide_path: Slide file.
        reader: Reader name for :func:`sammil_deploy.slide.open_slide`.
        mpp: Optional mpp override (geometry only).
        patch_level: Level the patches are read at.
        read_size_px: Patch side read at ``patch_level``.
        out_size_px: Side delivered; patches are resized to it with PIL (antialiased) when it differs.
        interpolation: ``bicubic`` or ``bilinear``.
    """

    slide_path: str
    reader: str
    mpp: float | None
    patch_level: int
    read_size_px: int
    out_size_px: int
    interpolation: str


class SlideHandles:
    """The slide handle of the slide being read (reopened when the job's slide or reader changes)."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._reader: Any = None

    def get(self, job: ReadJob) -> Any:
        """The open reader of ``job``'s slide (opened now if it is a different slide)."""
        from sammil_deploy.errors import PatchingError
        from sammil_deploy.slide import open_slide

        key = (job.slide_path, job.reader, job.mpp)
        if key != self._key:
            self.close()
            reader = open_slide(job.slide_path, reader=job.reader, mpp=job.mpp)
            if not 0 <= job.patch_level < reader.info.level_count:
                reader.close()
                raise PatchingError(
                    f"{Path(job.slide_path).name}: patch level {job.patch_level} does not exist "
                    f"(levels 0..{reader.info.level_count - 1})"
                )
            self._key, self._reader = key, reader
        return self._reader

    def close(self) -> None:
        """Close the open slide, if any."""
        if self._reader is not None:
            self._reader.close()
        self._key = self._reader = None


def read_batch(reader: Any, job: ReadJob, coords_level0_xy: np.ndarray, out: np.ndarray) -> None:
    """Read ``len(coords)`` patches into ``out[:n]`` ``(n, S, S, 3)`` uint8, resized as PIL (CLAM) does."""
    from PIL import Image

    size, resample = (job.read_size_px,) * 2, _resample(job.interpolation)
    resize = job.out_size_px != job.read_size_px
    for i, (x, y) in enumerate(np.asarray(coords_level0_xy, np.int64)):
        patch = reader.read_region((int(x), int(y)), job.patch_level, size)
        if resize:
            out[i] = np.asarray(Image.fromarray(patch).resize((job.out_size_px,) * 2, resample))
        else:
            out[i] = patch


def _resample(interpolation: str) -> Any:
    from PIL import Image

    return Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR


def read_batches_inline(
    job: ReadJob, coords_level0_xy: np.ndarray, order: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(patches, rows)`` batches read in this process (no workers); ``patches`` is reused between batches."""
    handles = SlideHandles()
    buffer = np.empty((batch_size, job.out_size_px, job.out_size_px, 3), np.uint8)
    try:
        reader = handles.get(job)
        for start in range(0, len(order), batch_size):
            rows = np.asarray(order[start : start + batch_size], np.int64)
            read_batch(reader, job, coords_level0_xy[rows], buffer)
            yield buffer[: len(rows)], rows
    finally:
        handles.close()
