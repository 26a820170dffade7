"""Cohort inference over several GPUs / nodes with Ray (optional extra: ``pip install 'sammil-deploy[ray]'``).

One Ray actor per GPU (or, on CPU-only clusters, per ``workers`` slot) loads the bundle and its networks once
and owns its patch-reader processes (``patching.reader_pool``, started once per actor); the driver skips slides
whose report exists, hands the others out one at a time (so fast workers take more), gathers the records and
writes the same outputs and ``summary.csv`` as a single-machine run. Outputs are written by the actors straight
into ``out_dir``, so on a multi-node cluster ``out_dir``, the slides and the bundle must be on a shared
filesystem at the same paths.

Faults: a worker process (or its node) that dies is restarted by Ray, up to ``max_restarts`` times per actor,
and the slide it was on goes back to the queue for the next free worker, up to ``max_retries`` times; then the
slide is recorded ``failed`` with the reason and the cohort goes on. Each slide is processed under its lock file
(as in a local run), so a second run into the same folder skips slides this one is on. A driver that dies
leaves finished slides' outputs (all written atomically); rerunning skips them. An OutputError (disk full,
read-only) stops the run, as locally. Workers needing a GPU are capped at the cluster's GPU count.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sammil_deploy import errors
from sammil_deploy._deps import require
from sammil_deploy.errors import ConfigError, OutputError, SammilError
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
    """What each Ray actor runs: the bundle, networks and reader processes started once, then one slide per call."""

    def __init__(self, bundle_dir: str, cfg: InferConfig, out_dir: str, lock_stale_s: float | None = None) -> None:
        from sammil_deploy.bundle import load_bundle
        from sammil_deploy.pipeline.backends import open_slide_backends

        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.lock_stale_s = lock_stale_s
        self.init_error: SammilError | None = None
        self.readers = None
        try:  # kept for ready(): a constructor that raises would be retried by Ray, and its message is lost
            self.bundle = load_bundle(Path(bundle_dir))
            self.backends = open_slide_backends(self.bundle, cfg.backend, device=cfg.device, precision=cfg.precision,
                                      intra_op_threads=cfg.intra_op_threads)  # fmt: skip
        except SammilError as err:
            self.init_error = err
        if self.init_error is None and cfg.num_workers > 0:
            from sammil_deploy.patching.reader_pool import ReaderPool

            self.readers = ReaderPool(cfg.num_workers, prefetch_batches=cfg.prefetch_batches)

    def run(self, slide: str) -> tuple[str, str, float, SlideResult | None, str | None, str | None]:
        """``(slide, status, seconds, result, error_type, detail)``; SammilErrors become ``failed`` records.

        The slide is processed under its lock; one locked by another run comes back ``locked``.
        """
        from sammil_deploy.pipeline.infer import run_slide
        from sammil_deploy.pipeline.locks import slide_lock

        start = time.perf_counter()
        with slide_lock(output_path(self.out_dir, Path(slide), "report"), self.lock_stale_s) as holder:
            if holder is not None:
                return slide, "locked", 0.0, None, None, f"locked by another run ({holder.describe()})"
            try:
                result = run_slide(Path(slide), self.bundle, self.cfg, self.out_dir, backends=self.backends,
                                   readers=self.readers)  # fmt: skip
            except SammilError as err:
                return slide, "failed", time.perf_counter() - start, None, type(err).__name__, str(err)
        return slide, "done", time.perf_counter() - start, result, None, None

    def ready(self) -> str:
        """The Ray node id this worker runs on; raises the SammilError that stopped its networks loading."""
        import ray

        if self.init_error is not None:
            raise self.init_error
        return ray.get_runtime_context().get_node_id()

    def close(self) -> None:
        """Release the networks and stop the reader processes."""
        if self.readers is not None:
            self.readers.close()
        if self.init_error is None:
            self.backends.close()


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """How many faults a Ray run absorbs.

    Attributes:
        max_restarts: Times Ray restarts one actor whose process (or node) died.
        max_retries: Times a slide goes back to the queue after its worker died under it; then it is ``failed``.
        lock_stale_s: Age after which another run's slide lock counts as abandoned (default: see ``locks``).
    """

    max_restarts: int = 3
    max_retries: int = 2
    lock_stale_s: float | None = None


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
    faults: FaultPolicy | None = None,
) -> BatchSummary[SlideResult]:
    """``run_slides`` distributed over a Ray cluster.

    Args:
        paths: Slide files (visible to every node at the same path).
        bundle_dir: Bundle folder (likewise).
        cfg: Inference config; on GPU workers ``device`` is each actor's GPU.
        out_dir: Output root (likewise).
        address: Ray address to attach to (``auto``, ``ray://host:10001``); None starts a local cluster.
        workers: Actors to start; default one per GPU of the cluster, or 1 without GPUs; GPU actors are capped
            at the cluster's GPU count (more would wait forever for a GPU).
        overwrite: Redo slides whose report exists.
        continue_on_error: Record failing slides and go on; else raise the first failure.
        on_record: Called with each slide's record as it arrives (skipped slides first).
        init_kwargs: Extra ``ray.init`` arguments for a local cluster (e.g. ``{"num_cpus": 2}``).
        faults: Restart/retry bounds (default :class:`FaultPolicy`).

    Returns:
        Records in input order; ``<out>/summary.csv`` is written.

    Raises:
        MissingDependencyError: Ray is not installed.
        ConfigError: Slide-id clash, or no GPU on the cluster while ``device`` asks for CUDA.
        OutputError: A worker cannot write its outputs (disk full, read-only): the run stops.
    """
    ray = require("ray", extra="ray")

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
            _dispatch(ray, todo, Path(bundle_dir).resolve(), cfg, out_dir, workers, continue_on_error, records,
                      on_record, faults or FaultPolicy())  # fmt: skip
        finally:
            if started:
                ray.shutdown()
    summary: BatchSummary[SlideResult] = BatchSummary([records[p] for p in paths])
    from sammil_deploy.bundle import load_bundle

    class_names = load_bundle(bundle_dir, verify_hashes=False).class_names
    write_summary(out_dir, [record_dict(r, out_dir) for r in summary.records], class_names)
    return summary


def plan_workers(
    cluster_resources: dict[str, float], device: str, workers: int | None, n_slides: int
) -> tuple[int, bool]:
    """``(actors to start, whether they need a GPU)`` for a cluster with ``cluster_resources``.

    Raises:
        ConfigError: ``device`` asks for CUDA and the cluster has no GPU.
    """
    gpus = int(cluster_resources.get("GPU", 0))
    wants_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if wants_gpu and gpus == 0:
        raise ConfigError(f"device {device!r} asks for CUDA but the Ray cluster has no GPU; use --device cpu")
    n = workers or (gpus if wants_gpu else 1)
    if wants_gpu and n > gpus:
        log.warning("ray: %d workers asked for but the cluster has %d GPUs; starting %d", n, gpus, gpus)
        n = gpus
    return max(1, min(n, n_slides)), wants_gpu


def _dispatch(
    ray: Any,
    todo: list[Path],
    bundle_dir: Path,
    cfg: InferConfig,
    out_dir: Path,
    workers: int | None,
    continue_on_error: bool,
    records: dict[Path, SlideRecord[SlideResult]],
    on_record: Callable[[SlideRecord[SlideResult]], None] | None,
    faults: FaultPolicy,
) -> None:
    """Start the actors, stream slides through them (re-queueing a dead worker's slide), fill ``records``."""
    n, wants_gpu = plan_workers(ray.cluster_resources(), cfg.device, workers, len(todo))
    options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1} if wants_gpu else {"num_cpus": 1}
    if wants_gpu:
        # Ray sets CUDA_VISIBLE_DEVICES per actor: its GPU is cuda:0 inside the actor.
        from dataclasses import replace

        cfg = replace(cfg, device="cuda")
    remote = ray.remote(max_restarts=faults.max_restarts, max_task_retries=0, **options)(InferWorker)
    actors = [remote.remote(str(bundle_dir), cfg, str(out_dir), faults.lock_stale_s) for _ in range(n)]
    log.info("ray: %d slides on %d %s workers", len(todo), n, "GPU" if wants_gpu else "CPU")

    def emit(record: SlideRecord[SlideResult]) -> None:
        if record.status == "done":
            record.output = output_path(out_dir, record.slide, "report")
        records[record.slide] = record
        if on_record is not None:
            on_record(record)
        if record.error_type == OutputError.__name__ or (record.status == "failed" and not continue_on_error):
            raise getattr(errors, record.error_type or "", SammilError)(record.detail)

    try:
        _stream(ray, actors, todo, faults, emit)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _ready(ray: Any, actors: list[Any]) -> list[str]:
    """Each actor's node id once its networks are loaded; a SammilError of loading is raised as itself.

    An actor that dies while starting is left to the stream loop (its first slide counts as a death).
    """
    from ray.exceptions import RayActorError, RayTaskError

    nodes = []
    for index, actor in enumerate(actors):
        try:
            nodes.append(ray.get(actor.ready.remote()))
        except RayTaskError as err:
            if isinstance(err.cause, SammilError):
                raise err.cause from None
            raise
        except RayActorError as err:
            log.warning("ray: worker %d died while starting (%s)", index, type(err).__name__)
            nodes.append("?")
    log.info("ray: workers on nodes %s", nodes)
    return nodes


def _stream(
    ray: Any, actors: list[Any], todo: list[Path], faults: FaultPolicy, emit: Callable[[SlideRecord[Any]], None]
) -> None:
    """Hand slides to idle actors one at a time, emitting each record as it arrives.

    A worker death re-queues its slide (up to ``max_retries``) for the next free worker and counts against
    that actor's restarts. The restarted actor is probed (``ready``) and gets work again only once it has
    loaded its networks; an actor past ``max_restarts``, or that Ray gave up on, is dropped.
    """
    from ray import exceptions
    from ray.exceptions import RayActorError, RayTaskError

    # Ray >= 2.22 tells "restarting / unreachable for now" apart from "dead"; older versions only say dead.
    unavailable = getattr(exceptions, "ActorUnavailableError", ())

    queue, idle = deque(todo), list(actors)
    deaths = dict.fromkeys(range(len(actors)), 0)
    attempts = dict.fromkeys(todo, 0)
    in_flight: dict[Any, tuple[int, Path | None]] = {}  # ref -> (actor index, slide; None for a probe)
    nodes = _ready(ray, actors)
    while queue or in_flight:
        while queue and idle:
            actor, slide = idle.pop(), queue.popleft()
            in_flight[actor.run.remote(str(slide))] = (actors.index(actor), slide)
        if not in_flight:  # every actor is gone
            for slide in queue:
                emit(SlideRecord(slide, "failed", error_type="WorkerError", detail="no live Ray worker left"))
            return
        (ref,), _ = ray.wait(list(in_flight), num_returns=1)
        index, slide = in_flight.pop(ref)
        try:
            value = ray.get(ref)
        except unavailable as err:  # restarting, or unreachable for now: probe it again shortly
            if slide is not None:
                _requeue_or_fail(slide, attempts, faults, queue, emit, err)
            else:
                time.sleep(0.5)
            in_flight[actors[index].ready.remote()] = (index, None)
            continue
        except RayTaskError as err:
            if slide is not None:
                raise  # a bug in the worker's code (SammilErrors come back as records): keep its traceback
            log.warning("ray: worker %d restarted but cannot load its networks (%s); dropped", index, err.cause)
            continue
        except RayActorError as err:
            if slide is None:
                log.warning("ray: worker %d is gone for good; dropped", index)
                continue
            deaths[index] += 1
            _requeue_or_fail(slide, attempts, faults, queue, emit, err)
            alive = deaths[index] <= faults.max_restarts
            log.warning("ray: worker %d died on %s (%d/%d restarts)%s", index, slide.name, deaths[index],
                        faults.max_restarts, "" if alive else "; dropped")  # fmt: skip
            if alive:
                in_flight[actors[index].ready.remote()] = (index, None)
            continue
        idle.append(actors[index])
        if slide is None:
            nodes[index] = value
            continue
        slide_str, status, seconds, result, error_type, detail = value
        if attempts[slide] and detail is None:
            detail = f"retried after its Ray worker died ({attempts[slide]}x)"
        log.info("ray: %s %s on worker %d, node %s", Path(slide_str).name, status, index, nodes[index])
        emit(SlideRecord(Path(slide_str), status, seconds=seconds, result=result, error_type=error_type,
                         detail=detail))  # type: ignore[arg-type]  # fmt: skip


def _requeue_or_fail(
    slide: Path,
    attempts: dict[Path, int],
    faults: FaultPolicy,
    queue: deque[Path],
    emit: Callable[[SlideRecord[Any]], None],
    err: Exception,
) -> None:
    """Put a slide whose worker died back in the queue, or record it failed once out of retries."""
    attempts[slide] += 1
    if attempts[slide] <= faults.max_retries:
        queue.append(slide)
        return
    reason = f"Ray worker died while processing it ({type(err).__name__}) {attempts[slide]} times; not retried"
    emit(SlideRecord(slide, "failed", error_type="WorkerError", detail=reason))
