"""ONNX → TensorRT plans (10.x and 11.x), loading with version/GPU checks, and running with torch CUDA buffers.

A plan is a *plain* serialized engine (``trtexec --loadEngine`` reads it) with a sidecar ``<plan>.json``
holding the TensorRT version, GPU name and compute capability, precision, optimisation profiles and the
source ONNX's SHA-256. Plans are tied to one TensorRT version and one GPU architecture, so the runtime's
``TrtBackend`` (:mod:`sammil_deploy.runtime.trt_backend`, imported here as ``TrtEngine``) refuses a mismatch
with the command to rebuild.

Precision comes from the ONNX graph (see :mod:`.fp16`): networks are strongly typed. TensorRT 10.x needs the
``STRONGLY_TYPED`` creation flag; 11.x is always strongly typed (the flag is accepted but ignored, and the
FP16/INT8 builder flags no longer exist), so no precision builder flag is ever set here.

The onnxruntime TensorRT execution provider is the alternative where TensorRT is installed but plans are
not wanted: :func:`ort_tensorrt_providers` returns its session options (engine and timing caches, profile
shapes, workspace).

Verified where: this module was written against NVIDIA's documented Python API; no machine available to
the project has TensorRT (``pip install tensorrt`` needs NVIDIA's index), so only the "refuse / fail fast"
paths run in CI. The GPU tests in ``tests/test_export_tensorrt.py`` exercise the rest where TensorRT exists.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sammil_deploy import __version__
from sammil_deploy._deps import require
from sammil_deploy.errors import ExportError, MissingDependencyError
from sammil_deploy.runtime.artifacts import read_onnx_metadata, sidecar_path
from sammil_deploy.runtime.trt_backend import TrtBackend as TrtEngine  # loads/refuses/runs plans (runtime/)

log = logging.getLogger(__name__)

SIDECAR_FORMAT_VERSION = 1
Shape = tuple[int, ...]
# input name -> (min, opt, max) shapes of the one optimisation profile
Profile = Mapping[str, tuple[Shape, Shape, Shape]]


def require_tensorrt_gpu() -> Any:
    """Return the ``tensorrt`` module if it is importable AND a CUDA GPU is visible; else fail with both reasons.

    Called before any export work when ``--trt`` is given.

    Raises:
        MissingDependencyError: TensorRT is missing and/or no CUDA GPU is visible (the message names both).
    """
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    try:
        trt = require("tensorrt", extra="trt")
    except MissingDependencyError as err:
        problems.append(str(err))
        trt = None
    if problems:
        raise MissingDependencyError(
            "--trt needs TensorRT on a CUDA GPU: " + "; ".join(problems) + ". Drop --trt to export ONNX only, "
            "or run on a GPU machine with TensorRT (docker/ GPU image)"
        )
    return trt


def gpu_identity(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of a CUDA device: ``{"gpu_name": ..., "compute_capability": "9.0"}``."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {"gpu_name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def profile_from_ranges(
    inputs: list[dict[str, Any]], ranges: Mapping[str, Any]
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shapes per input from the ONNX metadata's input specs and per-axis ranges.

    Args:
        inputs: ``[{"name", "shape"}]`` as stored in ``sammil_deploy.inputs`` metadata; string dims are dynamic.
        ranges: ``{dim name: DimRange}``.

    Raises:
        ExportError: A dynamic axis has no range.
    """
    profile = {}
    for spec in inputs:
        shapes = []
        for which in ("min", "opt", "max"):
            shape = []
            for dim in spec["shape"]:
                if isinstance(dim, str):
                    if dim not in ranges:
                        raise ExportError(f"input {spec['name']!r}: no range for dynamic axis {dim!r} in the profile")
                    shape.append(int(getattr(ranges[dim], which)))
                else:
                    shape.append(int(dim))
            shapes.append(tuple(shape))
        profile[spec["name"]] = (shapes[0], shapes[1], shapes[2])
    return profile


@dataclass(frozen=True, slots=True)
class EngineArtifact:
    """A built plan and its sidecar."""

    plan: Path
    sidecar: Path
    build_seconds: float
    meta: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "plan": str(self.plan),
            "sidecar": str(self.sidecar),
            "build_seconds": round(self.build_seconds, 2),
            **{k: self.meta[k] for k in ("tensorrt_version", "gpu_name", "compute_capability", "precision")},
        }


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    profile: Profile,
    *,
    precision: str,
    workspace_bytes: int,
    timing_cache: Path | None = None,
    part: str = "",
) -> EngineArtifact:
    """Build a TensorRT plan from an ONNX file (precision taken from the graph) and write plan + sidecar JSON.

    Args:
        onnx_path: Source ONNX (external data next to it is found by the parser).
        plan_path: Destination ``.plan``; the sidecar is ``<plan>.json``.
        profile: One optimisation profile: ``{input: (min, opt, max)}`` for every input.
        precision: Label recorded in the sidecar (the graph's types decide the real precision).
        workspace_bytes: Builder workspace memory-pool limit.
        timing_cache: Reused if the file exists, and rewritten with this build's timings.
        part: Which network (recorded in the sidecar).

    Raises:
        MissingDependencyError: No TensorRT or no GPU.
        ExportError: The parser rejects the ONNX file or the build fails (parser/builder messages included).
    """
    from sammil_deploy.features.encoders import file_sha256

    trt = require_tensorrt_gpu()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(strongly_typed) if strongly_typed is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path.name}: TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    trt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profile:
            raise ExportError(f"{onnx_path.name}: no profile shapes for input {name!r}; profile has {sorted(profile)}")
        trt_profile.set_shape(name, *profile[name])
    config.add_optimization_profile(trt_profile)
    attach_timing_cache(config, timing_cache)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise ExportError(
            f"{onnx_path.name}: TensorRT engine build failed (see the TensorRT log above); try a larger "
            "--workspace or smaller profile maxima"
        )
    meta = {
        "format_version": SIDECAR_FORMAT_VERSION,
        "sammil_deploy_version": __version__,
        "part": part,
        "tensorrt_version": trt.__version__,
        **gpu_identity(),
        "precision": precision,
        "strongly_typed": True,
        "profiles": [{name: [list(s) for s in shapes] for name, shapes in profile.items()}],
        "workspace_bytes": int(workspace_bytes),
        "source_onnx": onnx_path.name,
        "source_onnx_sha256": file_sha256(onnx_path),
        # I/O specs with the named dynamic axes, so the runtime validates inputs like the ONNX backends do
        **{k: v for k, v in read_onnx_metadata(onnx_path).items() if k in ("inputs", "outputs")},
        "build_seconds": round(seconds, 2),
    }
    sidecar = sidecar_path(plan_path)
    _write_atomic(plan_path, bytes(serialized))
    _write_atomic(sidecar, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    log.info("built %s in %.1f s", plan_path.name, seconds)
    if timing_cache is not None:  # after the plan: a cache problem must never cost the build
        save_timing_cache(config, timing_cache)
    return EngineArtifact(plan_path, sidecar, seconds, meta)


def attach_timing_cache(config: Any, path: Path | None) -> bool:
    """Give the builder ``config`` the timing cache at ``path``, or a fresh one; True when the file was used.

    A cache written by another TensorRT version or GPU is refused by ``set_timing_cache`` (it returns False),
    which would leave the builder without a cache and ``get_timing_cache()`` returning None after the build;
    a fresh, empty cache is attached instead so this build still records timings for the next one.
    """
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    if blob and config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False):
        log.info("reusing timing cache %s", path)
        return True
    if blob:
        log.warning("%s: timing cache from another TensorRT version or GPU; starting a fresh one", path)
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        log.warning("TensorRT refused an empty timing cache; building without one")
    return False


def save_timing_cache(config: Any, path: Path) -> bool:
    """Write the builder's timing cache to ``path`` (atomically); False, with a warning, when there is none."""
    cache = config.get_timing_cache()
    if cache is None:
        log.warning("TensorRT returned no timing cache after the build; %s not written", path)
        return False
    _write_atomic(path, bytes(cache.serialize()))
    return True


def trt_runner(engine: TrtEngine) -> Any:
    """Adapt a TensorRT backend to the numpy runner interface of :mod:`.verify`."""
    return engine.infer


def ort_tensorrt_providers(
    profile: Profile, *, cache_dir: Path, workspace_bytes: int, device: int = 0
) -> list[tuple[str, dict[str, Any]] | str]:
    """Providers for onnxruntime's TensorRT execution provider (CUDA and CPU as fallbacks).

    Engines and timing caches are kept in ``cache_dir`` and reused. The graph's own types set the precision,
    so ``trt_fp16_enable`` stays off (it is a weak-typing flag, gone in TensorRT 11).
    """

    def shapes(which: int) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in dims[which])}" for name, dims in profile.items())

    trt_options = {
        "device_id": device,
        "trt_max_workspace_size": int(workspace_bytes),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": shapes(0),
        "trt_profile_opt_shapes": shapes(1),
        "trt_profile_max_shapes": shapes(2),
    }
    return [
        ("TensorrtExecutionProvider", trt_options),
        ("CUDAExecutionProvider", {"device_id": device}),
        "CPUExecutionProvider",
    ]


def _write_atomic(path: Path, data: bytes) -> None:
    from sammil_deploy.io_atomic import write_bytes

    write_bytes(path, data)
