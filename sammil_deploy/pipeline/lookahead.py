"""Overlap across slides: prepare slide k+1 in a background thread while slide k is encoded.

The per-slide work of ``infer``/``extract`` splits into a *prepare* part (open the slide, tissue detection,
patch grid, SAM-image read and segmentation) and an *encode* part (patch features, MIL head, outputs). The
encode part keeps the reader processes and the encoder busy; the prepare part is mostly native code that
releases the GIL (OpenSlide, OpenCV, numpy, PyTorch/ONNX Runtime for SAM), so one helper thread can run it for
the next slide meanwhile. At most one slide is prepared ahead (bounded memory: one SAM image and mask set).

While a Lookahead is open, numpy's BLAS runs single-threaded. OpenBLAS shuts its thread pool down in a fork
handler; when anything forks while the helper thread is inside a BLAS call (the fallback segmenter's k-means),
that call waits for the killed pool forever, spinning a core (seen on the demo, when DataLoader workers were
forked per slide). The reader processes are now spawned once, before the helper thread starts
(:func:`run_slides_ahead`), and single-threaded BLAS keeps any other fork safe.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from sammil_deploy.pipeline.batch import BatchSummary, SlideRecord, run_batch

if TYPE_CHECKING:
    from sammil_deploy.patching.reader_pool import ReaderPool

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


class Lookahead(Generic[P]):
    """Prepared slides, one ahead: :meth:`take` returns slide k's and starts preparing the next one.

    Args:
        slides: The slides that will be taken, in order (skipped slides left out).
        prepare: Does the prepare part of one slide; its exceptions are re-raised by :meth:`take`.
        discard: Releases a prepared value that is never taken (e.g. closes its reader).

    Use as a context manager; leaving it waits for a running prepare and discards what was not taken.
    """

    def __init__(self, slides: Sequence[Path], prepare: Callable[[Path], P], discard: Callable[[P], None]) -> None:
        self._order = [Path(s) for s in slides]
        self._prepare, self._discard = prepare, discard
        from threadpoolctl import threadpool_limits

        self._blas_limits = threadpool_limits(limits=1, user_api="blas")  # see the module docstring
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slide-prepare")
        self._pending: dict[Path, Future[P]] = {}
        self._next = 0

    def __enter__(self) -> Lookahead[P]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def take(self, slide: Path) -> P:
        """Slide ``slide``'s prepared value (prepared now if it was not ahead); starts preparing the next slide.

        Raises:
            Whatever ``prepare`` raised for this slide.
        """
        slide = Path(slide)
        future = self._pending.pop(slide, None)
        self._drop_pending()  # prepared for a slide the caller skipped after all (e.g. another worker took it)
        if slide in self._order[self._next :]:
            self._next = self._order.index(slide, self._next) + 1
        self._submit_next()
        return future.result() if future is not None else self._prepare(slide)

    def _submit_next(self) -> None:
        if self._next < len(self._order) and not self._pending:
            ahead = self._order[self._next]
            self._pending[ahead] = self._pool.submit(self._prepare, ahead)

    def _drop_pending(self) -> None:
        for future in self._pending.values():
            try:
                self._discard(future.result())
            except Exception as err:  # noqa: BLE001  (a slide that was never taken: its failure is not reported)
                log.debug("prepared-ahead slide dropped: %s", err)
        self._pending.clear()

    def close(self) -> None:
        """Wait for a running prepare and discard values never taken (idempotent)."""
        self._drop_pending()
        self._pool.shutdown(wait=True)
        self._blas_limits.restore_original_limits()


def run_slides_ahead(
    paths: Sequence[Path],
    todo: Sequence[Path],
    prepare: Callable[[Path], P],
    discard: Callable[[P], None],
    finish: Callable[[P, ReaderPool | None], R],
    done_path: Callable[[Path], Path],
    *,
    num_workers: int,
    prefetch_batches: int = 2,
    overwrite: bool,
    continue_on_error: bool,
    on_record: Callable[[SlideRecord[R]], None] | None,
) -> BatchSummary[R]:
    """``run_batch`` over ``paths`` with one reader pool for the run and slide k+1 prepared while k finishes.

    The reader processes start once, before the prepare thread (see the module docstring), and read every
    slide; ``finish(prepared, pool)`` encodes and writes a slide; ``discard`` releases each prepared slide.

    Args:
        paths: Every slide (skipped ones are recorded as skipped by ``run_batch``).
        todo: The slides that will run, in order.
        prepare: The prepare part of one slide (run one slide ahead, as in :class:`Lookahead`).
        discard: Releases a prepared slide (after it is finished, or when it is never taken).
        finish: The encode part of one slide.
        done_path: A slide's final output (its presence means done).
        num_workers: Reader processes (0: none; the slides are read in this process).
        prefetch_batches: Batches each reader keeps ready.
        overwrite: Redo slides whose ``done_path`` exists.
        continue_on_error: Record a failing slide and go on.
        on_record: Called with each slide's record as it finishes.
    """
    from sammil_deploy.patching.reader_pool import ReaderPool

    with contextlib.ExitStack() as stack:
        pool = None
        if todo and num_workers > 0:
            pool = stack.enter_context(ReaderPool(num_workers, prefetch_batches=prefetch_batches))
        ahead = stack.enter_context(Lookahead(todo, prepare, discard))

        def process(path: Path) -> R:
            prepared = ahead.take(path)
            try:
                return finish(prepared, pool)
            finally:
                discard(prepared)

        return run_batch(
            paths, process, done_path, overwrite=overwrite, continue_on_error=continue_on_error, on_record=on_record
        )
