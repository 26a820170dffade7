"""End-to-end inference: slide → tissue → patches → SAM segments → features → group tokens → MIL head → outputs.

Per slide, under ``out_dir``: ``heatmaps/<id>.png``, ``geojson/<id>.geojson``, optionally ``features/<id>.h5``
(the ``extract`` layout, so inference doubles as extraction) and, written last, ``reports/<id>.json`` whose
presence marks the slide done. Patches are read and resized by reader processes started once per run
(``patching.reader_pool``) while the encoder runs (bounded prefetch, pinned memory on CUDA); in a cohort, the
next slide's tissue detection and segmentation run in a helper thread meanwhile (``pipeline.lookahead``, one
slide ahead). Only the thumbnail, the SAM image
and the (N, D) features are held in memory, never a full-resolution slide array.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sammil_deploy.config import load_config
from sammil_deploy.errors import ConfigError
from sammil_deploy.pipeline.batch import BatchSummary, SlideRecord
from sammil_deploy.pipeline.infer_types import (
    OUTPUT_DIRS,
    STAGES,
    InferConfig,
    SlideResult,
    StageProgress,
    config_snapshot,
    output_path,
)
from sammil_deploy.pipeline.lookahead import run_slides_ahead
from sammil_deploy.pipeline.slide_steps import finish_slide, prepare_slide

if TYPE_CHECKING:
    from sammil_deploy.bundle import Bundle
    from sammil_deploy.patching.reader_pool import ReaderPool
    from sammil_deploy.pipeline.backends import SlideBackends

log = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_DIRS",
    "STAGES",
    "InferConfig",
    "SlideResult",
    "StageProgress",
    "collect_slides",
    "config_snapshot",
    "load_infer_config",
    "output_path",
    "run_slide",
    "run_slides",
]


def load_infer_config(path: Path | None = None, *, overrides: Mapping[str, Any] | None = None) -> InferConfig:
    """Defaults < TOML file (top level or an ``[infer]`` table) < overrides (``None`` values skipped)."""
    return load_config(InferConfig, path, table="infer", section="infer", overrides=overrides)


def run_slide(
    path: Path,
    bundle: Bundle,
    cfg: InferConfig,
    out_dir: Path,
    *,
    backends: SlideBackends | None = None,
    progress: StageProgress | None = None,
    readers: ReaderPool | None = None,
) -> SlideResult:
    """Run the whole pipeline on one slide and write its outputs (report last, each file atomically).

    Args:
        path: Slide file.
        bundle: From ``load_bundle``; its preprocessing is used as trained.
        cfg: Backend, device, batching, outputs.
        out_dir: Output root.
        backends: Backends opened once for many slides (``open_slide_backends``); opened (and closed) here when None.
        progress: ``progress(slide, stage, done, total)`` at each stage start (0, 1) and per encoder batch.
        readers: Reader processes kept across slides (``patching.reader_pool``); started for this slide when None.

    Returns:
        The report, output paths, attention and timings.

    Raises:
        SlideError, TissueError, PatchingError, SegmentationError: Bad slide; nothing is left in ``out_dir``.
        BackendError, InputSpecError: The backend failed.
    """
    from sammil_deploy.pipeline.backends import open_slide_backends

    if backends is None:
        with open_slide_backends(bundle, cfg.backend, device=cfg.device, precision=cfg.precision,
                         intra_op_threads=cfg.intra_op_threads) as own:  # fmt: skip
            return run_slide(path, bundle, cfg, out_dir, backends=own, progress=progress, readers=readers)
    prepared = prepare_slide(path, bundle, cfg, backends, progress=progress)
    try:
        return finish_slide(prepared, bundle, cfg, out_dir, backends, progress=progress, readers=readers)
    finally:
        prepared.reader.close()


def run_slides(
    paths: Iterable[Path],
    bundle: Bundle,
    cfg: InferConfig,
    out_dir: Path,
    *,
    overwrite: bool = False,
    continue_on_error: bool = True,
    on_record: Callable[[SlideRecord[SlideResult]], None] | None = None,
    progress: StageProgress | None = None,
) -> BatchSummary[SlideResult]:
    """``run_slide`` over many slides with the networks loaded once; writes ``<out>/summary.csv`` at the end.

    Slides whose report exists are skipped (resume) unless ``overwrite``; a slide raising a SammilError is
    recorded and the run goes on (unless ``continue_on_error`` is False). The summary lists every slide,
    skipped ones from their existing reports.

    Raises:
        ConfigError: Two slides share a slide id.
        BackendError, WeightsError: The networks cannot be loaded (nothing can run then).
    """
    from sammil_deploy.pipeline.backends import open_slide_backends

    paths = [Path(p) for p in paths]
    check_unique_ids(paths)
    todo = [p for p in paths if overwrite or not output_path(out_dir, p, "report").exists()]
    backends = None
    if todo:
        backends = open_slide_backends(bundle, cfg.backend, device=cfg.device, precision=cfg.precision,
                             intra_op_threads=cfg.intra_op_threads)  # fmt: skip
    try:
        # One reader pool for the run; slide k+1 is prepared (tissue, grid, segmentation) while slide k is encoded.
        summary = run_slides_ahead(
            paths,
            todo,
            lambda p: prepare_slide(p, bundle, cfg, backends, progress=progress),
            lambda prepared: prepared.reader.close(),
            lambda prepared, readers: finish_slide(
                prepared, bundle, cfg, out_dir, backends, progress=progress, readers=readers
            ),  # fmt: skip
            lambda p: output_path(out_dir, p, "report"),
            num_workers=cfg.num_workers,
            prefetch_batches=cfg.prefetch_batches,
            overwrite=overwrite,
            continue_on_error=continue_on_error,
            on_record=on_record,
        )
    finally:
        if backends is not None:
            backends.close()
    write_summary(out_dir, [record_dict(r, out_dir) for r in summary.records], bundle.class_names)
    return summary


def check_unique_ids(paths: list[Path]) -> None:
    """Raise ConfigError if two slides would write the same outputs (``a.svs`` and ``a.tif``)."""
    stems = [p.stem for p in paths]
    clashes = sorted({str(p) for p in paths if stems.count(p.stem) > 1})
    if clashes:
        raise ConfigError(f"slides share a slide id (file name without extension), so outputs would clash: {clashes}")


def record_dict(record: SlideRecord[SlideResult], out_dir: Path) -> dict[str, Any]:
    """A batch record as the summary needs it; a skipped slide's report is read from disk."""
    from sammil_deploy.pipeline.report import read_report

    report_path = output_path(out_dir, record.slide, "report")
    report = None
    if record.status == "done" and record.result is not None:
        report = record.result.report
    elif record.status == "skipped":
        report = read_report(report_path)
    return {
        "slide": str(record.slide),
        "status": record.status,
        "seconds": round(record.seconds, 3),
        "report": report,
        "report_path": str(report_path) if report is not None else "",
        "error_type": record.error_type,
        "detail": record.detail,
    }


def write_summary(out_dir: Path, records: list[dict[str, Any]], class_names: tuple[str, ...]) -> Path:
    """``<out>/summary.csv`` from :func:`record_dict` entries, then the cohort page ``<out>/report.html`` from it."""
    from sammil_deploy.pipeline.report import SUMMARY_NAME, summary_rows, write_summary_csv
    from sammil_deploy.viz.cohort_report import write_cohort_report

    path = write_summary_csv(Path(out_dir) / SUMMARY_NAME, summary_rows(records, class_names), class_names)
    write_cohort_report(out_dir)
    return path


def collect_slides(inputs: Iterable[Path]) -> list[Path]:
    """Slides from arguments: slide files, folders of slides, or ``.txt``/``.csv`` lists (one path per line).

    In a list, blank lines and ``#`` comments are skipped, a CSV's first column is the path (a header row whose
    first cell is ``slide`` or ``path`` is skipped), and relative paths are relative to the list's folder.

    Raises:
        SlideError: A path that does not exist, or a folder without slides.
    """
    from sammil_deploy.errors import SlideError
    from sammil_deploy.slide import find_slides

    slides: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_file() and item.suffix.lower() in (".txt", ".csv"):
            lines = [line.split(",")[0].strip() for line in item.read_text().splitlines()]
            entries = [e for e in lines if e and not e.startswith("#")]
            if entries and entries[0].lower() in ("slide", "path", "slide_path"):
                entries = entries[1:]
            for entry in entries:
                path = Path(entry) if Path(entry).is_absolute() else item.parent / entry
                if not path.is_file():
                    raise SlideError(f"{item}: listed slide {entry} not found; fix the list")
                slides.append(path)
        else:
            slides.extend(find_slides(item))
    if not slides:
        raise SlideError("no slides given; pass slide files, folders or a .txt list")
    return slides
