"""Model benchmarks: SAM image encoder, SAM automatic mask generation, ResNet50-trunc and the MIL head.

Each network is built with random weights (speed does not depend on the values), exported with the export
stage's wrappers and specs, and timed on every requested backend variant at every size in interleaved
rounds, so the speed-up against PyTorch eager FP32 is a ratio measured in the same run on the same inputs.
Every non-reference row also records its output parity against the reference (max |diff|, cosine).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

import sammil_deploy.bench.backends as bk
from sammil_deploy.bench.bench_setup import BenchSetup
from sammil_deploy.bench.report import BenchmarkResult, failed, unavailable
from sammil_deploy.bench.suites import ModelBench, SamEncoderBench
from sammil_deploy.bench.timing import TimingPolicy, TimingStats, time_interleaved
from sammil_deploy.bench.variants import Variant, reference_first
from sammil_deploy.errors import SammilError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sammil_deploy.export.spec import ExportSpec
    from sammil_deploy.runtime.base import Backend

log = logging.getLogger(__name__)

# A failing backend is a result row, not the end of the run: export/runtime errors are SammilErrors, and torch
# (compile, out of memory) raises RuntimeError subclasses.
RUN_ERRORS = (SammilError, RuntimeError, MemoryError)
InputsFn = Callable[[int, np.random.Generator], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Network:
    """A network to time: the module, its export contract and how to make inputs of a given size.

    Attributes:
        component: Report component (``sam_encoder``, ``resnet50``, ``mil``).
        name: File stem of its exports.
        module: CPU module whose ``forward`` takes ``spec``'s inputs in order.
        spec: I/O contract (export stage).
        example: Export example inputs.
        inputs: ``inputs(size, rng)`` → named host arrays.
        size_label: ``size_label(size)`` → words for the report.
        unit: What one item is.
        salt: Seed salt of this network's inputs.
    """

    component: str
    name: str
    module: nn.Module
    spec: ExportSpec
    example: tuple[torch.Tensor, ...]
    inputs: InputsFn
    size_label: Callable[[int], str]
    unit: str
    salt: int


def bench_network(
    net: Network,
    variants: Sequence[Variant],
    sizes: Sequence[int],
    ctx: BenchSetup,
    timing: TimingPolicy | None = None,
) -> list[BenchmarkResult]:
    """Time ``net`` on each variant at each size (items per call = size); torch eager FP32 is the reference.

    ``timing`` overrides the run's policy for this network.
    """
    rows: list[BenchmarkResult] = []
    loaded: dict[Variant, Backend] = {}
    device_module = _DeviceModules(net.module)
    for variant in variants:
        reason = bk.unavailable_reason(variant, ctx.device)
        if reason is not None:
            rows += [_unavailable(net, variant, s, reason) for s in sizes]
            continue
        ctx.progress(f"{net.component}: loading {variant}")
        try:
            module = device_module(ctx.device) if variant.runtime.kind == "torch" else net.module
            loaded[variant] = bk.open_variant(
                variant,
                name=net.name,
                module=module,
                spec=net.spec,
                example=net.example,
                sizes=sizes,
                cache=ctx.exports,
                device=ctx.device,
                threads=ctx.threads,
            )
        except RUN_ERRORS as err:
            rows += [_failed(net, variant, s, err) for s in sizes]
    try:
        for size in sizes:
            ctx.progress(f"{net.component}: timing {net.size_label(size)}")
            rows += _time_size(net, loaded, size, ctx, timing)
    finally:
        for backend in loaded.values():
            backend.close()
    return _ordered(rows, variants, sizes, net)


def _time_size(
    net: Network, loaded: Mapping[Variant, Backend], size: int, ctx: BenchSetup, timing: TimingPolicy | None
) -> list[BenchmarkResult]:
    inputs = net.inputs(size, ctx.rng(net.salt * 1_000_003 + size))
    rows, calls, notes = [], {}, {}
    reference: dict[str, np.ndarray] | None = None
    for variant, backend in loaded.items():
        try:
            feed = bk.feed_for(backend, inputs)
            outputs = bk.run_once(backend, feed)
        except RUN_ERRORS as err:
            rows.append(_failed(net, variant, size, err))
            continue
        note: dict[str, Any] = {"io": bk.io_note(backend), "artifact": backend.artifact}
        if variant.is_torch_eager_fp32:
            reference = outputs
        elif reference is not None:
            note["parity_vs_torch_fp32"] = bk.parity(reference, outputs)
        if backend.kind == "onnxruntime":
            note["providers"] = backend.describe().get("providers")
        calls[variant], notes[variant] = bk.call_for(backend, feed), note
    try:
        stats = time_interleaved({str(v): fn for v, fn in calls.items()}, timing or ctx.timing, timer=ctx.timer)
    except RUN_ERRORS as err:
        return rows + [_failed(net, v, size, err) for v in calls]
    for variant in calls:
        rows.append(_ok(net, variant, size, stats[str(variant)], loaded[variant].device, notes[variant]))
    return rows


class _DeviceModules:
    """The module on the benchmark device; a copy when that is not the CPU, so exports still see a CPU module."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._copies: dict[str, nn.Module] = {}

    def __call__(self, device: str) -> nn.Module:
        if device == "cpu":
            return self.module
        if device not in self._copies:
            self._copies[device] = copy.deepcopy(self.module).to(device)
        return self._copies[device]


def _ok(
    net: Network, variant: Variant, size: int, stats: TimingStats, device: str, notes: dict[str, Any]
) -> BenchmarkResult:
    return BenchmarkResult(
        net.component,
        variant.backend,
        variant.precision,
        net.size_label(size),
        size,
        net.unit,
        timing=stats,
        device=device,
        reference=variant.is_torch_eager_fp32,
        notes=notes,
    )


def _unavailable(net: Network, variant: Variant, size: int, reason: str) -> BenchmarkResult:
    return unavailable(net.component, variant.backend, variant.precision, net.size_label(size), net.unit, reason)


def _failed(net: Network, variant: Variant, size: int, err: BaseException) -> BenchmarkResult:
    log.warning("%s %s at %s failed: %s", net.component, variant, net.size_label(size), err)
    reason = f"{type(err).__name__}: {err}"
    return failed(net.component, variant.backend, variant.precision, net.size_label(size), net.unit, reason)


def _ordered(
    rows: list[BenchmarkResult], variants: Sequence[Variant], sizes: Sequence[int], net: Network
) -> list[BenchmarkResult]:
    """Rows by size, then by the suite's variant order."""
    rank = {(v.backend, v.precision): i for i, v in enumerate(variants)}
    size_rank = {net.size_label(s): i for i, s in enumerate(sizes)}
    return sorted(rows, key=lambda r: (size_rank[r.size], rank[(r.backend, r.precision)]))


# --- the networks -------------------------------------------------------------------------------------------


def sam_encoder_network(model: str, ctx: BenchSetup) -> Network:
    """SAM's image encoder of size ``model`` (random weights), ``images (B, 3, S, S) -> embeddings``."""
    import torch

    from sammil_deploy.export.sam import encoder_spec, random_encoder_inputs
    from sammil_deploy.segment.sam_model import build_sam

    torch.manual_seed(ctx.seed)
    sam = build_sam(model, device="cpu")
    size_px = int(sam.image_encoder.img_size)
    example = (torch.from_numpy(random_encoder_inputs(sam, 2, ctx.rng(1))["images"]),)
    return Network(
        component="sam_encoder",
        name=f"sam_{model}_encoder",
        module=sam.image_encoder.eval(),
        spec=encoder_spec(sam, model, "random"),
        example=example,
        inputs=lambda b, rng: random_encoder_inputs(sam, b, rng),
        size_label=lambda b: f"{model} batch {b} ({size_px} px)",
        unit="images",
        salt=1,
    )


def resnet50_network(ctx: BenchSetup) -> Network:
    """ResNet50-trunc with folded normalisation (the run's random weights): ``(B, 224, 224, 3) uint8 -> (B, 1024)``."""
    import torch

    from sammil_deploy.export.resnet import random_patches, resnet_spec
    from sammil_deploy.features.encoders import NormalizedEncoder, create_encoder

    encoder = create_encoder("resnet50_trunc", weights=ctx.encoder_weights())
    size_px = encoder.input_size_px
    return Network(
        component="resnet50",
        name="resnet50_trunc",
        module=NormalizedEncoder(encoder).eval(),
        spec=resnet_spec(encoder),
        example=(torch.from_numpy(random_patches(size_px, 2, ctx.rng(2))["patches"]),),
        inputs=lambda b, rng: random_patches(size_px, b, rng),
        size_label=lambda b: f"batch {b}",
        unit="patches",
        salt=2,
    )


def mil_network(ctx: BenchSetup) -> Network:
    """The AB-MIL head as SAM-MIL trains it (the run's random checkpoint: 1024 -> 512, attention 128, 2 classes)."""
    from sammil_deploy.export.mil import example_inputs, mil_spec, random_bag
    from sammil_deploy.features.encoders import file_sha256
    from sammil_deploy.mil.checkpoint import load_checkpoint
    from sammil_deploy.mil.model import BagClassifier

    weights = ctx.mil_checkpoint()
    ckpt = load_checkpoint(weights)
    in_dim = ckpt.model_config.in_dim
    return Network(
        component="mil",
        name="mil_head",
        module=BagClassifier(ckpt.model).eval(),
        spec=mil_spec(ckpt, file_sha256(weights)),
        example=example_inputs(ckpt),
        inputs=lambda n, rng: random_bag(in_dim, n, rng),
        size_label=lambda n: f"{n} instances",
        unit="instances",
        salt=3,
    )


def bench_models(name: str, cfg: SamEncoderBench | ModelBench, ctx: BenchSetup) -> list[BenchmarkResult]:
    """Build network(s) ``name`` (``sam_encoder`` per model, ``resnet50``, ``mil``) and time them per ``cfg``."""
    if isinstance(cfg, SamEncoderBench):
        builders = [lambda m=m: sam_encoder_network(m, ctx) for m in cfg.models]
    else:
        builders = [{"resnet50": lambda: resnet50_network(ctx), "mil": lambda: mil_network(ctx)}[name]]
    rows = []
    for build in builders:
        ctx.progress(f"{name}: building the network")
        rows += bench_network(build(), reference_first(cfg.variants), cfg.sizes, ctx, cfg.timing)
    return rows
