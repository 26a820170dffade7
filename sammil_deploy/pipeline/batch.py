"""Generic per-slide batch loop: resume by final output, continue past failures, record everything.

Each slide is processed under its lock file (:mod:`sammil_deploy.pipeline.locks`), so two runs sharing an
output folder split the slides between them. A bad slide is recorded and the loop goes on; an OutputError (disk
full, read-only, no permission) stops it, since every later slide would fail the same way: what finished is
kept and a rerun resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from sammil_deploy.errors import OutputError, SammilError
from sammil_deploy.io_atomic import output_error
from sammil_deploy.pipeline.locks import slide_lock

log = logging.getLogger(__name__)

R = TypeVar("R")
Status = Literal["done", "skipped", "locked", "failed"]


@dataclass(slots=True)
class SlideRecord(Generic[R]):
    """Outcome for one slide.

    Attributes:
        slide: Input path.
        status: ``done``, ``skipped`` (final output already there), ``locked`` (another run is processing it;
            that run writes its outputs) or ``failed``.
        seconds: Wall time spent on it.
        result: What the per-slide function returned (``done`` only).
        output: The final output path.
        error_type: SammilError subclass name (``failed`` only).
        detail: Error message or skip reason.
    """

    slide: Path
    status: Status
    seconds: float = 0.0
    result: R | None = None
    output: Path | None = None
    error_type: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view; ``result`` is expanded with its own ``to_dict`` when it has one."""
        result = self.result.to_dict() if hasattr(self.result, "to_dict") else self.result
        return {
            "slide": str(self.slide),
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "output": None if self.output is None else str(self.output),
            "error_type": self.error_type,
            "detail": self.detail,
            "result": result,
        }


@dataclass(slots=True)
class BatchSummary(Generic[R]):
    """All slide records of one batch run, in input order."""

    records: list[SlideRecord[R]] = field(default_factory=list)

    @property
    def done(self) -> list[SlideRecord[R]]:
        """Slides processed in this run."""
        return [r for r in self.records if r.status == "done"]

    @property
    def skipped(self) -> list[SlideRecord[R]]:
        """Slides whose final output already existed."""
        return [r for r in self.records if r.status == "skipped"]

    @property
    def locked(self) -> list[SlideRecord[R]]:
        """Slides another run held the lock of (not processed here)."""
        return [r for r in self.records if r.status == "locked"]

    @property
    def failed(self) -> list[SlideRecord[R]]:
        """Slides that raised a SammilError."""
        return [r for r in self.records if r.status == "failed"]

    @property
    def all_succeeded(self) -> bool:
        """True when no slide failed (skipped slides count as successes)."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary with counts and every record."""
        return {
            "done": len(self.done),
            "skipped": len(self.skipped),
            "locked": len(self.locked),
            "failed": len(self.failed),
            "all_succeeded": self.all_succeeded,
            "slides": [r.to_dict() for r in self.records],
        }


def run_batch(
    slides: Iterable[Path],
    process: Callable[[Path], R],
    output_path: Callable[[Path], Path],
    *,
    overwrite: bool = False,
    continue_on_error: bool = True,
    on_record: Callable[[SlideRecord[R]], None] | None = None,
    lock_stale_s: float | None = None,
) -> BatchSummary[R]:
    """Run ``process`` on each slide, skipping slides whose final output exists (resume).

    The final output is written last and atomically by ``process``, so its presence means the slide is done.

    Args:
        slides: Slide paths, processed in order.
        process: Does the work for one slide and returns a result; raises SammilError on bad input.
        output_path: The final output file of a slide; its ``.lock`` sibling is the slide's lock.
        overwrite: Re-run slides whose output exists.
        continue_on_error: Record a SammilError and go on; otherwise re-raise it. Other exceptions (bugs,
            KeyboardInterrupt) always propagate.
        on_record: Called after each slide with its record (progress bars).
        lock_stale_s: Age after which another run's lock is considered abandoned (default
            ``$SAMMIL_LOCK_STALE_S`` or 6 h); a lock of a dead process on this host is always stale.

    Returns:
        The records, in input order.

    Raises:
        OutputError: An output cannot be written (disk full, read-only, no permission): the batch stops.
    """
    summary: BatchSummary[R] = BatchSummary()
    for slide in slides:
        slide = Path(slide)
        final = output_path(slide)
        if final.exists() and not overwrite:
            record: SlideRecord[R] = SlideRecord(slide, "skipped", output=final, detail="output exists")
        else:
            with slide_lock(final, lock_stale_s) as holder:
                if holder is not None:
                    record = SlideRecord(slide, "locked", detail=f"locked by another run ({holder.describe()})")
                elif final.exists() and not overwrite:  # another run finished it while we were on other slides
                    record = SlideRecord(slide, "skipped", output=final, detail="output exists")
                else:
                    record = _process_one(slide, process, final, continue_on_error)
        summary.records.append(record)
        if on_record is not None:
            on_record(record)
    return summary


def _process_one(slide: Path, process: Callable[[Path], R], final: Path, continue_on_error: bool) -> SlideRecord[R]:
    start = time.perf_counter()
    try:
        result = process(slide)
    except OutputError:
        raise
    except OSError as err:  # an environment fault raised outside the write helper (e.g. a library's own mkdir)
        raise output_error(err, final) or err from err
    except SammilError as err:
        if not continue_on_error:
            raise
        log.info("slide %s failed: %s", slide.name, err)
        return SlideRecord(slide, "failed", seconds=time.perf_counter() - start, error_type=type(err).__name__,
                           detail=str(err))  # fmt: skip
    return SlideRecord(slide, "done", seconds=time.perf_counter() - start, result=result, output=final)
