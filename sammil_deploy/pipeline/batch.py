"""Generic per-slide batch loop: resume by final output, continue past failures, record everything."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from sammil_deploy.errors import SammilError

log = logging.getLogger(__name__)

R = TypeVar("R")
Status = Literal["done", "skipped", "failed"]


@dataclass(slots=True)
class SlideRecord(Generic[R]):
    """Outcome for one slide.

    Attributes:
        slide: Input path.
        status: ``done``, ``skipped`` (final output already there) or ``failed``.
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
) -> BatchSummary[R]:
    """Run ``process`` on each slide, skipping slides whose final output exists (resume).

    The final output is written last and atomically by ``process``, so its presence means the slide is done.

    Args:
        slides: Slide paths, processed in order.
        process: Does the work for one slide and returns a result; raises SammilError on bad input.
        output_path: The final output file of a slide.
        overwrite: Re-run slides whose output exists.
        continue_on_error: Record a SammilError and go on; otherwise re-raise it. Other exceptions (bugs,
            KeyboardInterrupt) always propagate.
        on_record: Called after each slide with its record (progress bars).

    Returns:
        The records, in input order.
    """
    summary: BatchSummary[R] = BatchSummary()
    for slide in slides:
        slide = Path(slide)
        final = output_path(slide)
        start = time.perf_counter()
        if final.exists() and not overwrite:
            record: SlideRecord[R] = SlideRecord(slide, "skipped", output=final, detail="output exists")
        else:
            try:
                result = process(slide)
            except SammilError as err:
                if not continue_on_error:
                    raise
                log.info("slide %s failed: %s", slide.name, err)
                record = SlideRecord(
                    slide,
                    "failed",
                    seconds=time.perf_counter() - start,
                    error_type=type(err).__name__,
                    detail=str(err),
                )
            else:
                record = SlideRecord(slide, "done", seconds=time.perf_counter() - start, result=result, output=final)
        summary.records.append(record)
        if on_record is not None:
            on_record(record)
    return summary
