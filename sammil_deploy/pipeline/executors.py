"""Where a cohort's slides run: in this process, or spread over a Ray cluster (what `sammil-deploy infer` calls)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sammil_deploy.errors import ConfigError

if TYPE_CHECKING:
    from sammil_deploy.bundle import Bundle
    from sammil_deploy.pipeline.batch import BatchSummary, SlideRecord
    from sammil_deploy.pipeline.infer import InferConfig, SlideResult, StageProgress


@dataclass(frozen=True, slots=True)
class RayPlacement:
    """Run slides on Ray actors.

    ``address``: the cluster to attach to (``auto``, ``ray://host:10001``); None starts a local one.
    ``workers``: actors to start; None means one per GPU, or 1.
    """

    address: str | None = None
    workers: int | None = None


def ray_placement(enabled: bool, address: str | None = None, workers: int | None = None) -> RayPlacement | None:
    """The placement the ``--ray``, ``--ray-address`` and ``--ray-workers`` flags ask for (None: this process).

    Raises:
        ConfigError: An address or worker count without ``--ray``.
    """
    if not enabled:
        if address is not None or workers is not None:
            raise ConfigError("--ray-address and --ray-workers need --ray")
        return None
    return RayPlacement(address=address, workers=workers)


def infer_cohort(
    paths: Iterable[Path],
    bundle_dir: Path,
    cfg: InferConfig,
    out_dir: Path,
    *,
    bundle: Bundle | None = None,
    ray: RayPlacement | None = None,
    overwrite: bool = False,
    continue_on_error: bool = True,
    on_record: Callable[[SlideRecord[SlideResult]], None] | None = None,
    progress: StageProgress | None = None,
) -> BatchSummary[SlideResult]:
    """Classify slides with the bundle at ``bundle_dir``, here (``ray`` None) or on a Ray cluster.

    Here, the networks are loaded once and ``progress`` reports every stage of every slide; ``bundle`` is the
    already loaded ``bundle_dir`` (loaded when None). On Ray, each actor loads the bundle from ``bundle_dir`` (the
    same path on every node) and only per-slide records cross the cluster (``progress`` is not called). Either
    way ``<out_dir>/summary.csv`` is written; see :func:`~.infer.run_slides` and
    :func:`~.distributed.run_slides_ray`.
    """
    if ray is not None:
        from sammil_deploy.pipeline.distributed import run_slides_ray

        return run_slides_ray(
            paths, bundle_dir, cfg, out_dir, address=ray.address, workers=ray.workers,
            overwrite=overwrite, continue_on_error=continue_on_error, on_record=on_record,
        )  # fmt: skip
    from sammil_deploy.bundle import load_bundle
    from sammil_deploy.pipeline.infer import run_slides

    return run_slides(
        paths, bundle if bundle is not None else load_bundle(bundle_dir), cfg, out_dir,
        overwrite=overwrite, continue_on_error=continue_on_error, on_record=on_record, progress=progress,
    )  # fmt: skip


__all__ = ["RayPlacement", "infer_cohort", "ray_placement"]
