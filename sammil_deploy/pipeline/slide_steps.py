"""``infer``'s per-slide steps, split so a cohort prepares slide k+1 while slide k finishes (``pipeline.lookahead``).

*Prepare*: open, tissue, patch grid, segmentation. *Finish*: patch features, MIL head, outputs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sammil_deploy.bundle import Bundle
    from sammil_deploy.patching import PatchGrid
    from sammil_deploy.patching.reader_pool import ReaderPool
    from sammil_deploy.pipeline.backends import SlideBackends
    from sammil_deploy.pipeline.infer_types import InferConfig, SlideResult, StageProgress
    from sammil_deploy.segment import PatchAssignment, Segmentation
    from sammil_deploy.slide import SlideReader


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class PreparedSlide:
    """A slide after its prepare part (open, tissue, patch grid, segmentation): what the encode part needs.

    The reader stays open (the outputs draw on it); :func:`finish_slide`'s caller closes it.
    """

    path: Path
    reader: SlideReader
    grid: PatchGrid
    segmentation: Segmentation
    assignment: PatchAssignment
    timer: _Timer
    start: float


def prepare_slide(
    path: Path, bundle: Bundle, cfg: InferConfig, backends: SlideBackends, *, progress: StageProgress | None = None
) -> PreparedSlide:
    """Open the slide, detect tissue, lay the patch grid, segment (the part that can run one slide ahead).

    Raises:
        SlideError, TissueError, PatchingError, SegmentationError: Bad slide (the reader is closed then).
    """
    from sammil_deploy.patching import make_patch_grid, require_patch_fits
    from sammil_deploy.pipeline.stages import segment_patches
    from sammil_deploy.slide import open_slide
    from sammil_deploy.tissue import detect_tissue

    path = Path(path)
    pre = bundle.preprocess
    timer, start = _Timer(), time.perf_counter()

    def tick(stage: str) -> None:
        if progress is not None:
            progress(path, stage, 0, 1)

    tick("open")
    with timer.stage("open"):
        reader = open_slide(path, mpp=cfg.mpp or pre.mpp)
    try:
        info = reader.info
        tick("tissue")
        with timer.stage("tissue"):
            require_patch_fits(info, pre.patch)
            tissue = detect_tissue(reader, pre.tissue)
        tick("patching")
        with timer.stage("patching"):
            grid = make_patch_grid(info, tissue, pre.patch)
        tick("segmentation")
        with timer.stage("segmentation"):
            _, segmentation, assignment = segment_patches(
                reader,
                tissue.bbox_level0,
                grid.coords_level0_xy,
                grid.patch_size_level0_px,
                pre.segment,
                segmenter=backends.segmenter,
            )
    except BaseException:
        reader.close()
        raise
    return PreparedSlide(path, reader, grid, segmentation, assignment, timer, start)


def finish_slide(
    prepared: PreparedSlide,
    bundle: Bundle,
    cfg: InferConfig,
    out_dir: Path,
    backends: SlideBackends,
    *,
    progress: StageProgress | None = None,
    readers: ReaderPool | None = None,
) -> SlideResult:
    """Encode the patches, run the MIL head and write the outputs of a prepared slide.

    ``readers``: reader processes kept across slides; started for this slide when None.

    Raises:
        SlideError: A patch cannot be read; nothing is left in ``out_dir``.
        BackendError, InputSpecError: The backend failed.
    """
    from sammil_deploy.errors import InputSpecError
    from sammil_deploy.features.engine import encode_patches
    from sammil_deploy.pipeline.infer_types import SlideInference
    from sammil_deploy.pipeline.outputs import write_outputs
    from sammil_deploy.pipeline.stages import spatial_context

    path, reader, grid, timer = prepared.path, prepared.reader, prepared.grid, prepared.timer

    def tick(stage: str, done: int = 0, total: int = 1) -> None:
        if progress is not None:
            progress(path, stage, done, total)

    tick("features", 0, len(grid))
    with timer.stage("features"):
        features = encode_patches(
            path, grid.coords_level0_xy, backends.features, patch_level=grid.patch_level,
            read_size_px=grid.read_size_px, input_size_px=int(bundle.encoder["input_size_px"]),
            interpolation=bundle.encoder["interpolation"], batch_size=cfg.batch_size, num_workers=cfg.num_workers,
            prefetch_batches=cfg.prefetch_batches, mpp=cfg.mpp or bundle.preprocess.mpp, pool=readers,
            progress=lambda done, total: tick("features", done, total),
        )  # fmt: skip
    if features.shape[1] != bundle.feature_dim:
        raise InputSpecError(
            f"{backends.features.label}: gives {features.shape[1]}-d features, the bundle says {bundle.feature_dim}"
        )
    tick("mil")
    with timer.stage("mil"):
        context = spatial_context(features, prepared.assignment)
        tokens = np.concatenate([features, context.group_features]) if bundle.group_tokens else features
        head = backends.mil.infer({"features": np.ascontiguousarray(tokens, np.float32)})
    tick("outputs")
    with timer.stage("outputs"):
        slide = SlideInference(path, reader, grid, features, context, prepared.segmentation, head, timer.seconds,
                               prepared.start)  # fmt: skip
        return write_outputs(slide, out_dir, bundle, cfg, backends)
