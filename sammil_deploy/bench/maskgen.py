"""SAM automatic mask generation benchmark: upstream generator vs ``FastMaskGenerator`` on each backend.

One SAM image (the benchmark slide's thumbnail at the SAM-image size), SAM-MIL's generator settings (or the
suite's smaller ones), the same model for every row. The reference row is upstream ``SamAutomaticMaskGenerator``
on PyTorch eager FP32; the fast generator runs on PyTorch (the same modules the export wraps), ONNX Runtime or
TensorRT through the runtime backends, driving the exported encoder and point decoder.

``mask_decoder = "stand_in"`` (the tiny default) is the many-mask stand-in (:func:`many_mask_sam`: the tiny SAM's
random encoder, a disc decoder), so hundreds of masks go through post-processing as with a trained SAM; random
weights would leave one image-sized blob. ``"sam"`` keeps the model's own two-way-transformer decoder with
calibrated scores (:func:`calibrated_random_sam`), so the decoder costs what SAM's does (the real sizes always).
Each row records its mask count and, against the reference row, the worst and median best-match IoU over the
masks of both sets (``matched_iou_min`` 1.0: every mask has an identical partner).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import sammil_deploy.bench.backends as bk
from sammil_deploy.bench.bench_setup import BenchSetup
from sammil_deploy.bench.components import RUN_ERRORS
from sammil_deploy.bench.report import BenchmarkResult, failed, unavailable
from sammil_deploy.bench.suites import MaskGenerationBench
from sammil_deploy.bench.timing import time_interleaved
from sammil_deploy.bench.variants import Variant, reference_first

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from sammil_deploy.export.spec import ExportSpec
    from sammil_deploy.runtime.base import Backend

COMPONENT = "mask_generation"
UNIT = "images"
# Sub-stages of the fast generator's profile reported per row (median over the timed calls).
STAGES = ("encoder_s", "decoder_s", "postprocess_s")


def calibrated_random_sam(model: str, seed: int) -> Sam:
    """Random SAM (CPU) with mask logits x100 and IoU predictions +0.6.

    Random weights give logits near 0 and IoU predictions near 0, so no mask would pass SAM-MIL's 0.6
    thresholds (and upstream's generator fails on an empty result); scaled like this, scores straddle the
    thresholds as a trained SAM's do, so the generators do their real post-processing work.
    """
    import torch

    from sammil_deploy.segment.sam_model import build_sam

    torch.manual_seed(seed)
    sam = build_sam(model, device="cpu")
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(100.0)
            mlp.layers[-1].bias.mul_(100.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.6)
    return sam


class _PointPassThrough(nn.Module):
    """Prompt-encoder stand-in: hands the (P, 1, 2) input-frame points to the decoder as the sparse embedding."""

    def forward(self, points: tuple, boxes: Any = None, masks: Any = None) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ARG002
        coords, _ = points
        return coords.float(), torch.zeros(1)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1)


class DiscMaskDecoder(nn.Module):
    """Mask-decoder stand-in: three disc masks (radii 6, 12, 24 input px) around each point, bent by the embedding.

    Random SAM weights give image-sized blobs that NMS collapses to one or two masks, which hides the per-mask
    work (and any per-mask disagreement) of a generator. This decoder gives hundreds of distinct masks that
    depend on the image through the real encoder's embedding, with predicted IoUs straddling SAM-MIL's 0.6.
    ``forward`` has ``MaskDecoder``'s signature; the sparse embedding is the (P, 1, 2) xy prompt itself.
    """

    def __init__(self, input_size_px: int, low_res_px: int) -> None:
        super().__init__()
        centres = (torch.arange(low_res_px, dtype=torch.float32) + 0.5) * (input_size_px / low_res_px)
        self.register_buffer("grid_y", centres[:, None].expand(low_res_px, low_res_px).clone())
        self.register_buffer("grid_x", centres[None, :].expand(low_res_px, low_res_px).clone())
        self.register_buffer("radii", torch.tensor([6.0, 12.0, 24.0]))

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: Any,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: Any,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(low-res logits (P, 3, h, w), predicted IoU (P, 3)) for (P, 1, 2) xy points."""
        from torch.nn import functional as F

        del image_pe, dense_prompt_embeddings, multimask_output  # MaskDecoder's keyword signature
        xy = sparse_prompt_embeddings[:, 0]  # (P, 2)
        dx, dy = self.grid_x - xy[:, 0, None, None], self.grid_y - xy[:, 1, None, None]
        dist = torch.sqrt(dx * dx + dy * dy)  # (P, h, w); not hypot, which the ONNX exporter lacks
        feature = F.interpolate(image_embeddings[:, :1], self.grid_x.shape, mode="bilinear", align_corners=False)
        feature = (feature - feature.mean()) / (feature.std() + 1e-6)  # (1, 1, h, w)
        logits = 12.0 * (self.radii[None, :, None, None] - dist[:, None]) / self.radii[None, :, None, None]
        logits = logits + 3.0 * feature
        iou = torch.sigmoid(feature.flatten().mean() + (xy[:, 0] - xy[:, 1]) / 40.0)  # (P,)
        return logits, iou[:, None].expand(-1, 3)


class DiscPointDecoder(nn.Module):
    """The stand-in as an exportable point decoder: ``(embedding, coords, labels) -> (low-res logits, IoU)``.

    The same I/O contract as ``export.sam.SamPointDecoder``, so its ONNX file drives ``FastMaskGenerator``
    exactly like an exported SAM decoder.
    """

    def __init__(self, decoder: DiscMaskDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(
        self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See the class docstring (the automatic generator's prompts are all foreground points, label 1)."""
        foreground = (point_labels[..., None] > 0).to(point_coords.dtype)  # x 1: keeps num_prompts dynamic
        return self.decoder(image_embeddings, None, point_coords * foreground, None, True)


def many_mask_sam(seed: int = 0) -> Sam:
    """Tiny SAM (its real random encoder) whose prompt encoder and mask decoder are the disc stand-ins.

    Upstream ``SamAutomaticMaskGenerator`` runs it unchanged; :class:`DiscPointDecoder` exports its decoder.
    """
    from sammil_deploy.segment.sam_model import build_sam

    torch.manual_seed(seed)
    sam = build_sam("tiny", device="cpu")
    size_px = int(sam.image_encoder.img_size)
    sam.prompt_encoder = _PointPassThrough()
    sam.mask_decoder = DiscMaskDecoder(size_px, size_px // 4)
    return sam


def benchmark_sam(model: str, seed: int, mask_decoder: str = "sam") -> tuple[Sam, Sam]:
    """(the SAM the generators run, a SAM with upstream's modules of the same size for the export specs).

    ``mask_decoder``: ``stand_in`` (tiny only) for :func:`many_mask_sam`, ``sam`` for :func:`calibrated_random_sam`.
    """
    from sammil_deploy.segment.sam_model import build_sam

    if mask_decoder == "stand_in":
        return many_mask_sam(seed), build_sam(model, device="cpu")
    sam = calibrated_random_sam(model, seed)
    return sam, sam


def _call(backend: Backend) -> Callable[..., list[Any]]:
    """``fn(*inputs) -> outputs`` in declared order, through ``infer_torch`` as ``infer`` runs the SAM chain.

    ONNX Runtime binds the torch inputs and writes its outputs into torch tensors (IO binding: no copies on
    the CPU, no host round trip on CUDA); torch/TensorRT outputs stay on the device.
    """
    import torch

    names = backend.input_names
    dtypes = {t.name: getattr(torch, t.dtype) for t in backend.input_spec}

    def run(*values: torch.Tensor) -> list[Any]:
        feed = {n: v.to(dtypes[n]) for n, v in zip(names, values, strict=True)}
        return [o.float() for o in backend.infer_torch(feed).values()]

    return run


@dataclass(frozen=True)
class _SamParts:
    """The calibrated SAM's encoder and point decoder with their export specs (CPU module + device copy)."""

    sam: Sam
    sam_device: Sam
    enc_spec: ExportSpec
    dec_spec: ExportSpec
    n_crops: int

    def modules(self, on_torch: bool, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
        """Encoder and point decoder: on the device for torch variants, on the CPU (for export) otherwise."""
        from sammil_deploy.export.sam import SamPointDecoder

        sam = self.sam_device if on_torch and device != "cpu" else self.sam
        if isinstance(sam.mask_decoder, DiscMaskDecoder):
            return sam.image_encoder, DiscPointDecoder(sam.mask_decoder).eval()
        return sam.image_encoder, SamPointDecoder(sam).eval()

    def examples(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Export examples (every dynamic axis >= 2)."""
        import torch

        from sammil_deploy.export.sam import point_grid_inputs

        size_px = int(self.sam.image_encoder.img_size)
        grid = point_grid_inputs(2, (size_px, size_px))
        embedding = torch.zeros(tuple(int(d) for d in self.dec_spec.inputs[0].shape))
        points = (torch.from_numpy(grid["point_coords"]), torch.from_numpy(grid["point_labels"]))
        return (torch.zeros((2, 3, size_px, size_px)),), (embedding, *points)


def bench_mask_generation(cfg: MaskGenerationBench, ctx: BenchSetup) -> list[BenchmarkResult]:
    """Time automatic mask generation on the slide's SAM image per ``cfg`` (see the module docstring)."""
    from sammil_deploy.export.sam import decoder_spec, encoder_spec
    from sammil_deploy.segment.automask import sam_segment
    from sammil_deploy.segment.config import SegmentConfig
    from sammil_deploy.segment.fast_automask import FastMaskGenerator
    from sammil_deploy.slide import open_slide

    with open_slide(ctx.slide) as reader:
        image = reader.thumbnail(cfg.long_side_px)
    seg_cfg = SegmentConfig(
        segmenter="sam",
        sam_model="tiny",  # the model fields are unused: the generators get the built model or backends
        device=ctx.device,
        points_per_side=cfg.points_per_side,
        crop_n_layers=cfg.crop_n_layers,
        points_per_batch=cfg.points_per_batch,
    )
    model = "tiny many-mask stand-in" if cfg.mask_decoder == "stand_in" else f"{cfg.model} random, SAM decoder"
    size = (
        f"{model} {image.shape[1]}x{image.shape[0]} px, {cfg.points_per_side} pts/side, "
        f"{cfg.crop_n_layers} crop layer(s)"
    )
    ctx.progress(f"{COMPONENT}: building SAM {cfg.model}")
    sam, spec_sam = benchmark_sam(cfg.model, ctx.seed, cfg.mask_decoder)
    parts = _SamParts(
        sam=sam,
        sam_device=sam if ctx.device == "cpu" else copy.deepcopy(sam).to(ctx.device),
        enc_spec=encoder_spec(spec_sam, cfg.model, "random"),
        dec_spec=decoder_spec(spec_sam, cfg.model, "random"),
        n_crops=sum(4**layer for layer in range(cfg.crop_n_layers + 1)),
    )

    rows: list[BenchmarkResult] = []
    generators: dict[str, Callable[[], Any]] = {}
    meta: dict[str, tuple[str, str, bool, list[Backend]]] = {}  # label -> backend, precision, reference, backends
    if cfg.reference:
        generators["reference"] = lambda: sam_segment(image, seg_cfg, sam=parts.sam_device)
        meta["reference"] = ("torch (upstream generator)", "fp32", True, [])
    for variant in reference_first(cfg.variants, "mask_generation.variants"):
        backend_label = f"{variant.backend} (fast generator)"
        reason = bk.unavailable_reason(variant, ctx.device)
        if reason is not None:
            rows.append(unavailable(COMPONENT, backend_label, variant.precision, size, UNIT, reason))
            continue
        ctx.progress(f"{COMPONENT}: loading {variant}")
        try:
            opened = _open_pair(variant, parts, cfg, ctx)
        except RUN_ERRORS as err:
            reason = f"{type(err).__name__}: {err}"
            rows.append(failed(COMPONENT, backend_label, variant.precision, size, UNIT, reason))
            continue
        encode, decode = _call(opened[0]), _call(opened[1])
        generator = FastMaskGenerator(
            lambda images, encode=encode: encode(images)[0],
            lambda *inputs, decode=decode: tuple(decode(*inputs)),
            seg_cfg,
            int(sam.image_encoder.img_size),
            device=ctx.device,
            name=f"sam_fast_{cfg.model}",
            points_per_batch=cfg.points_per_batch,
            pixel_mean=sam.pixel_mean.flatten().tolist(),
            pixel_std=sam.pixel_std.flatten().tolist(),
        )
        label = f"fast {variant}"
        generators[label] = lambda g=generator: g.generate(image)
        meta[label] = (backend_label, variant.precision, variant.is_torch_eager_fp32 and not cfg.reference, opened)
    try:
        rows += _time(generators, meta, size, ctx, cfg)
    finally:
        for _, _, _, opened in meta.values():
            for backend in opened:
                backend.close()
    order = [("torch (upstream generator)", "fp32")]
    order += [(f"{v.backend} (fast generator)", v.precision) for v in reference_first(cfg.variants)]
    return sorted(rows, key=lambda r: order.index((r.backend, r.precision)))


def _open_pair(variant: Variant, parts: _SamParts, cfg: MaskGenerationBench, ctx: BenchSetup) -> list[Backend]:
    """Encoder and point-decoder backends of ``variant`` (exported once per run for ONNX/TensorRT)."""
    encoder, decoder = parts.modules(variant.runtime.kind == "torch", ctx.device)
    enc_example, dec_example = parts.examples()
    # As in infer: no ORT spinning, the generator post-processes in torch between decoder calls.
    common = {"cache": ctx.exports, "device": ctx.device, "threads": ctx.threads, "ort_spin": False}
    return [
        bk.open_variant(
            variant,
            name=f"sam_{cfg.model}_{cfg.mask_decoder}_encoder",
            module=encoder,
            spec=parts.enc_spec,
            example=enc_example,
            sizes=(1, parts.n_crops),
            **common,
        ),
        bk.open_variant(
            variant,
            name=f"sam_{cfg.model}_{cfg.mask_decoder}_decoder",
            module=decoder,
            spec=parts.dec_spec,
            example=dec_example,
            sizes=(1, cfg.points_per_batch),
            **common,
        ),
    ]


def _time(
    generators: dict[str, Callable[[], Any]],
    meta: dict[str, tuple[str, str, bool, list]],
    size: str,
    ctx: BenchSetup,
    cfg: MaskGenerationBench,
) -> list[BenchmarkResult]:
    from sammil_deploy.segment.compare import mask_agreement

    rows, runnable, outputs = [], {}, {}
    for label, generate in generators.items():
        backend, precision, _, _ = meta[label]
        try:
            outputs[label] = generate()
        except RUN_ERRORS as err:
            rows.append(failed(COMPONENT, backend, precision, size, UNIT, f"{type(err).__name__}: {err}"))
            continue
        runnable[label] = generate
    ctx.progress(f"{COMPONENT}: timing {len(runnable)} generators")
    policy = cfg.timing or ctx.timing
    # Each timed call's sub-stage seconds: what the backends change (encoder, decoder) vs the shared rest.
    profiles: dict[str, list[Mapping[str, Any]]] = {label: [] for label in runnable if label != "reference"}

    def recorded(label: str) -> Callable[[], Any]:
        def call() -> Any:
            out = runnable[label]()
            profiles[label].append(out.profile)
            return out

        return call

    fast = {label: recorded(label) for label in profiles}
    stats = time_interleaved(fast, replace(policy, iters=cfg.fast_iters, min_iters=cfg.fast_iters), timer=ctx.timer)
    if "reference" in runnable:
        stats["reference"] = time_interleaved({"reference": runnable["reference"]}, policy, timer=ctx.timer)[
            "reference"
        ]
    for label in runnable:
        backend, precision, is_reference, _ = meta[label]
        notes: dict[str, Any] = {"masks": outputs[label].n_masks, "points_per_batch": cfg.points_per_batch}
        if "reference" in outputs and label != "reference":
            notes.update(mask_agreement(outputs["reference"], outputs[label]).as_dict())
        if profiles.get(label):
            notes["stage_median_s"] = {
                stage: round(statistics.median(p[stage] for p in profiles[label]), 4) for stage in STAGES
            }
        rows.append(
            BenchmarkResult(
                COMPONENT,
                backend,
                precision,
                size,
                1,
                UNIT,
                timing=stats[label],
                device=ctx.device,
                reference=is_reference or label == "reference",
                notes=notes,
            )
        )
    return rows
