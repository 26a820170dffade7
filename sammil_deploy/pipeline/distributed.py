"""Cohort inference over several GPUs / nodes with Ray (optional extra: ``pip install 'sammil-deploy[ray]'``).

One Ray actor per GPU (or, on CPU-only clusters, per ``workers`` slot) loads the bundle and its networks once
and owns its patch-reader pool (the DataLoader worker processes of ``encode_patches``); the driver skips slides
whose report exists, hands the others out one at a time (so fast workers take more), gathers the records and
writes the same outputs and ``summary.csv`` as a single-machine run. Outputs are written by the actors straight
into ``out_dir``, so on a multi-node cluster ``out_dir``, the slides and the bundle must be on a shared
filesystem at the same paths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sammil_deploy import errors
from sammil_deploy._deps import require
from sammil_deploy.errors import ConfigError, SammilError
from sammil_deploy.pipeline.batch import BatchSummary, SlideRecord
from sammil_deploy.pipeline.infer import (
    InferConfig,
    SlideResult,
    check_unique_ids,
    output_path,
    record_dict,
    write_summary,
)

log = logging.getLogger(__name__)


class InferWorker:
    """What each Ray actor runs: the bundle and networks loaded once, then one slide per call."""

    def __init__(self, bundle_dir: str, cfg: InferConfig, out_dir: str) -> None:
        from sammil_deploy.pipeline.bundle import load_bundle
        from sammil_deploy.pipeline.models import load_models

        self.bundle = load_bundle(Path(bundle_dir))
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.models = load_models(self.bundle, cfg.backend, device=cfg.device, precision=cfg.precision,
                                  intra_op_threads=cfg.intra_op_threads)  # fmt: skip

    def run(self, slide: str) -> tuple[str, str, float, SlideResult | None, str | None, str | None]:
        """``(slide, status, seconds, result, error_type, detail)``; SammilErrors become ``failed`` records."""
        from sammil_deploy.pipeline.infer import run_slide

        start = time.perf_counter()
        try:
            result = run_slide(Path(slide), self.bundle, self.cfg, self.out_dir, models=self.models)
        except SammilError as err:
            return slide, "failed", time.perf_counter() - start, None, type(err).__name__, str(err)
        return slide, "done", time.perf_counter() - start, result, None, None

    def close(self) -> None:
        """Release the networks."""
        self.models.close()


def run_slides_ray(
    paths: Iterable[Path],
    bundle_dir: Path,
    cfg: InferConfig,
    out_dir: Path,
    *,
    address: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    continue_on_error: bool = True,
    on_record: Callable[[SlideRecord[SlideResult]], None] | None = None,
    init_kwargs: dict[str, Any] | None = None,
) -> BatchSummary[SlideResult]:
    """``run_slides`` distributed over a Ray cluster.

    Args:
        paths: Slide files (visible to every node at the same path).
        bundle_dir: Bundle folder (likewise).
        cfg: Inference config; on GPU workers ``device`` is each actor's GPU.
        out_dir: Output root (likewise).
        address: Ray address to attach to (``auto``, ``ray://host:10001``); None starts a local cluster.
        workers: Actors to start; default one per GPU of the cluster, or 1 without GPUs.
        overwrite: Redo slides whose report exists.
        continue_on_error: Record failing slides and go on; else raise the first failure.
        on_record: Called with each slide's record as it arrives (skipped slides first).
        init_kwargs: Extra ``ray.init`` arguments for a local cluster (e.g. ``{"num_cpus": 2}``).

    Returns:
        Records in input order; ``<out>/summary.csv`` is written.

    Raises:
        MissingDependencyError: Ray is not installed.
        ConfigError: Slide-id clash, or no GPU on the cluster while ``device`` asks for CUDA.
    """
    ray = require("ray", extra="ray")
    from ray.util import ActorPool

    paths = [Path(p).resolve() for p in paths]
    check_unique_ids(paths)
    out_dir = Path(out_dir).resolve()
    records: dict[Path, SlideRecord[SlideResult]] = {}
    todo = []
    for p in paths:
        report = output_path(out_dir, p, "report")
        if report.exists() and not overwrite:
            records[p] = SlideRecord(p, "skipped", output=report, detail="output exists")
            if on_record is not None:
                on_record(records[p])
        else:
            todo.append(p)
    started = False
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, **((init_kwargs or {}) if address is None else {}))
            started = True
        try:
            _dispatch(ray, ActorPool, todo, Path(bundle_dir).resolve(), cfg, out_dir, workers, continue_on_error,
                      records, on_record)  # fmt: skip
        finally:
            if started:
                ray.shutdown()
    summary: BatchSummary[SlideResult] = BatchSummary([records[p] for p in paths])
    from sammil_deploy.pipeline.bundle import load_bundle

    class_names = load_bundle(bundle_dir, verify_hashes=False).class_names
    write_summary(out_dir, [record_dict(r, out_dir) for r in summary.records], class_names)
    return summary


def _dispatch(
    ray: Any,
    actor_pool: Any,
    todo: list[Path],
    bundle_dir: Path,
    cfg: InferConfig,
    out_dir: Path,
    workers: int | None,
    continue_on_error: bool,
    records: dict[Path, SlideRecord[SlideResult]],
    on_record: Callable[[SlideRecord[SlideResult]], None] | None,
) -> None:
    """Start the actors, stream slides through them, fill ``records``."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    wants_gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and gpus > 0)
    if wants_gpu and gpus == 0:
        raise ConfigError(f"device {cfg.device!r} asks for CUDA but the Ray cluster has no GPU; use --device cpu")
    n = workers or (gpus if wants_gpu else 1)
    n = max(1, min(n, len(todo)))
    options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1} if wants_gpu else {"num_cpus": 1}
    if wants_gpu:
        # Ray sets CUDA_VISIBLE_DEVICES per actor: its GPU is cuda:0 inside the actor.
        from dataclasses import replace

        cfg = replace(cfg, device="cuda")
    remote = ray.remote(**options)(InferWorker)
    actors = [remote.remote(str(bundle_dir), cfg, str(out_dir)) for _ in range(n)]
    log.info("ray: %d slides on %d %s workers", len(todo), n, "GPU" if wants_gpu else "CPU")
    try:
        pool = actor_pool(actors)
        for slide, status, seconds, result, error_type, detail in pool.map_unordered(
            lambda actor, p: actor.run.remote(str(p)), todo
        ):
            path = Path(slide)
            final = output_path(out_dir, path, "report") if status == "done" else None
            record = SlideRecord(path, status, seconds=seconds, result=result, output=final,
                                 error_type=error_type, detail=detail)  # type: ignore[arg-type]  # fmt: skip
            records[path] = record
            if on_record is not None:
                on_record(record)
            if status == "failed" and not continue_on_error:
                raise getattr(errors, error_type or "", SammilError)(detail)
    finally:
        for actor in actors:
            ray.kill(actor)
