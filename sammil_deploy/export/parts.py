"""Per-part export steps used by :func:`.api.export_all`: build the torch model, export, derive, verify, build.

Parity inputs per part (fresh random values from the run's seed, two sizes of each dynamic axis, CPU-sized):
SAM encoder batch 1 and 2; SAM decoder 1 and 16 prompts on a random embedding, plus the encoder → decoder
chain on an 8x8 point grid (mask IoU); ResNet50 batch 1 and 3 of random pixels; MIL bags of 7 and 300
instances. With a parity slide, SAM also runs on the slide's thumbnail and ResNet50 on 8 tissue patches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sammil_deploy.export import mil as mil_export
from sammil_deploy.export import resnet as resnet_export
from sammil_deploy.export import sam as sam_export
from sammil_deploy.export.config import ExportConfig
from sammil_deploy.export.onnx_export import export_fp16_variant, export_onnx
from sammil_deploy.export.spec import ExportArtifact, ExportSpec, read_metadata
from sammil_deploy.export.tensorrt import EngineArtifact
from sammil_deploy.export.verify import ParityReport, Runner, torch_runner, verify_parity
from sammil_deploy.features.encoders import NormalizedEncoder
from sammil_deploy.mil.model import BagClassifier

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

RANDOM = "random"


@dataclass
class PartResult:
    """Artifacts and parity verdicts of one part."""

    part: str
    artifacts: list[ExportArtifact] = field(default_factory=list)
    parity: list[ParityReport] = field(default_factory=list)
    engine: EngineArtifact | None = None

    @property
    def passed(self) -> bool:
        """Every parity check passed."""
        return all(p.passed for p in self.parity)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "part": self.part,
            "passed": self.passed,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "parity": [p.to_dict() for p in self.parity],
            "engine": self.engine.to_dict() if self.engine else None,
        }


@dataclass(frozen=True)
class PartContext:
    """Settings shared by the part exporters of one ``export_all`` run."""

    out_dir: Path
    cfg: ExportConfig
    rng: np.random.Generator
    parity_slide: Path | None
    calibration_slides: tuple[Path, ...]
    trt: bool
    progress: Callable[[str], None]


def load_sam(model_type: str, checkpoint: Path | None, ctx: PartContext) -> tuple[Sam, str, str]:
    """SAM on the CPU, its resolved type and the checkpoint SHA-256 (``random`` without one)."""
    from sammil_deploy.features.encoders import file_sha256
    from sammil_deploy.segment.sam_model import build_sam, detect_sam_model_type

    ctx.progress(f"loading SAM {model_type}")
    sam = build_sam(model_type, checkpoint=checkpoint, device="cpu")
    if model_type == "auto":
        model_type = detect_sam_model_type(sam.state_dict())
    return sam, model_type, file_sha256(checkpoint) if checkpoint is not None else RANDOM


def export_sam(sam: Sam, model_type: str, sha: str, parts: tuple[str, ...], ctx: PartContext) -> list[PartResult]:
    """Export the SAM encoder and/or decoder; the chain parity runs when both are exported."""
    results: dict[str, PartResult] = {}
    final: dict[str, ExportArtifact] = {}
    size_px = int(sam.image_encoder.img_size)
    if "sam_encoder" in parts:
        spec = sam_export.encoder_spec(sam, model_type, sha, ctx.cfg.opset)
        example = (torch.from_numpy(sam_export.random_encoder_inputs(sam, 2, ctx.rng)["images"]),)
        reference = torch_runner(sam.image_encoder, spec.input_names, spec.output_names)
        inputs = [sam_export.random_encoder_inputs(sam, b, ctx.rng) for b in (1, 2)]
        results["sam_encoder"], final["sam_encoder"] = _export_part(
            sam.image_encoder, spec, example, f"sam_{model_type}_encoder", reference, inputs, ctx
        )
    if "sam_decoder" in parts:
        spec = sam_export.decoder_spec(sam, model_type, sha, ctx.cfg.opset)
        decoder = sam_export.SamPointDecoder(sam).eval()
        embed_shape = tuple(int(d) for d in spec.inputs[0].shape)
        grid = sam_export.point_grid_inputs(4, (size_px, size_px))  # 16 prompts
        example = (
            torch.from_numpy(ctx.rng.standard_normal(embed_shape, dtype=np.float32)),
            torch.from_numpy(grid["point_coords"][:4]),
            torch.from_numpy(grid["point_labels"][:4]),
        )
        reference = torch_runner(decoder, spec.input_names, spec.output_names)
        embedding = ctx.rng.standard_normal(embed_shape, dtype=np.float32)
        inputs = [
            {
                "image_embeddings": embedding,
                "point_coords": grid["point_coords"][:1],
                "point_labels": grid["point_labels"][:1],
            },
            {"image_embeddings": embedding, **grid},
        ]
        results["sam_decoder"], final["sam_decoder"] = _export_part(
            decoder, spec, example, f"sam_{model_type}_decoder", reference, inputs, ctx, mask_outputs=("low_res_masks",)
        )
    if len(final) == 2:
        ctx.progress("SAM encoder -> decoder chain parity")
        results["sam_decoder"].parity.extend(_sam_chain_reports(sam, final, results, ctx))
    return list(results.values())


def _sam_chain_reports(
    sam: Sam, final: Mapping[str, ExportArtifact], results: Mapping[str, PartResult], ctx: PartContext
) -> list[ParityReport]:
    precision = final["sam_decoder"].precision
    size_px = int(sam.image_encoder.img_size)
    # (images, point grid, artifact label, notes): random pixels always, a real thumbnail when a slide is given
    input_sets = [
        (
            sam_export.random_encoder_inputs(sam, 1, ctx.rng),
            sam_export.point_grid_inputs(8, (size_px, size_px)),
            "sam chain (random)",
            {"inputs": RANDOM},
        )
    ]
    if ctx.parity_slide is not None:
        from sammil_deploy.slide import open_slide

        with open_slide(ctx.parity_slide) as reader:
            rgb = reader.thumbnail(size_px)
        images, resized_hw = sam_export.sam_inputs_from_rgb(sam, rgb)
        name = ctx.parity_slide.name
        input_sets.append(
            (images, sam_export.point_grid_inputs(8, resized_hw), f"sam chain ({name})", {"inputs": f"slide {name}"})
        )
    reports = [
        sam_export.chain_parity(
            sam,
            final["sam_encoder"].path,
            final["sam_decoder"].path,
            images,
            points,
            precision,
            artifact=artifact,
            notes=notes,
        )  # fmt: skip
        for images, points, artifact, notes in input_sets
    ]
    engines = {part: results[part].engine for part in final}
    if ctx.trt and all(engines.values()):
        from sammil_deploy.export.tensorrt import TrtEngine, trt_runner

        runners = [trt_runner(TrtEngine(engines[p].plan)) for p in ("sam_encoder", "sam_decoder")]  # type: ignore[union-attr]
        images, points = input_sets[-1][:2]  # the slide's thumbnail when there is one
        reports.append(
            sam_export.chain_parity(
                sam,
                runners[0],
                runners[1],
                images,
                points,
                precision,
                artifact="sam TensorRT chain",
                notes={"backend": "tensorrt"},
            )
        )
    return reports


def export_resnet(weights: Path | None, allow_random: bool, ctx: PartContext) -> PartResult:
    """Export ResNet50-trunc with folded normalisation; INT8 when asked (calibrated on the user's slides)."""
    from sammil_deploy.features.encoders import create_encoder

    ctx.progress("building resnet50_trunc")
    encoder = create_encoder("resnet50_trunc", weights=weights, allow_random=allow_random and weights is None)
    module = NormalizedEncoder(encoder).eval()
    spec = resnet_export.resnet_spec(encoder, ctx.cfg.opset)
    size_px = encoder.input_size_px
    example = (torch.from_numpy(resnet_export.random_patches(size_px, 2, ctx.rng)["patches"]),)
    reference = torch_runner(module, spec.input_names, spec.output_names)
    inputs = [resnet_export.random_patches(size_px, b, ctx.rng) for b in (1, 3)]
    if ctx.parity_slide is not None:
        inputs.append(
            resnet_export.slide_patches(
                ctx.parity_slide,
                patch_size_level0_px=512,
                out_size_px=size_px,
                count=8,
                rng=ctx.rng,
                interpolation=encoder.interpolation,
            )
        )
    calibration = variant_inputs = None
    if ctx.cfg.precision_for("resnet50") == "int8":
        calibration, variant_inputs = _int8_patches(size_px, encoder.interpolation, ctx)
    result, _ = _export_part(
        module, spec, example, "resnet50_trunc", reference, inputs, ctx,
        calibration=calibration, variant_inputs=variant_inputs,
    )  # fmt: skip
    return result


def _int8_patches(size_px: int, interpolation: str, ctx: PartContext) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Calibration patches from the calibration slides, and a separate draw of real patches for the INT8 gate.

    INT8 is judged on tissue only: its ranges are calibrated on tissue, and random pixels say nothing about it.
    """
    per_slide = -(-ctx.cfg.calibration_patches // len(ctx.calibration_slides))
    calibration = np.concatenate(
        [
            resnet_export.slide_patches(
                s,
                patch_size_level0_px=512,
                out_size_px=size_px,
                count=per_slide,
                rng=ctx.rng,
                interpolation=interpolation,
            )["patches"]
            for s in ctx.calibration_slides
        ]
    )[: ctx.cfg.calibration_patches]
    check_slide = ctx.parity_slide or ctx.calibration_slides[0]
    check = resnet_export.slide_patches(
        check_slide, patch_size_level0_px=512, out_size_px=size_px, count=8, rng=ctx.rng, interpolation=interpolation
    )
    return calibration, [check]


def export_mil(checkpoint: Path, ctx: PartContext) -> PartResult:
    """Export the trained MIL head from its checkpoint."""
    from sammil_deploy.features.encoders import file_sha256
    from sammil_deploy.mil.checkpoint import checkpoint_paths, load_checkpoint

    ctx.progress(f"loading MIL checkpoint {Path(checkpoint).name}")
    ckpt = load_checkpoint(checkpoint)
    module = BagClassifier(ckpt.model).eval()
    spec = mil_export.mil_spec(ckpt, file_sha256(checkpoint_paths(checkpoint)[0]), ctx.cfg.opset)
    in_dim = ckpt.model_config.in_dim
    reference = torch_runner(module, spec.input_names, spec.output_names)
    inputs = [mil_export.random_bag(in_dim, n, ctx.rng) for n in (7, 300)]
    result, _ = _export_part(module, spec, mil_export.example_inputs(ckpt), "mil_head", reference, inputs, ctx)
    return result


def _export_part(
    module: torch.nn.Module,
    spec: ExportSpec,
    example: tuple[torch.Tensor, ...],
    stem: str,
    reference: Runner,
    inputs: list[dict[str, np.ndarray]],
    ctx: PartContext,
    *,
    mask_outputs: tuple[str, ...] = (),
    calibration: np.ndarray | None = None,
    variant_inputs: list[dict[str, np.ndarray]] | None = None,
) -> tuple[PartResult, ExportArtifact]:
    """FP32 export + parity, the precision variant + parity, and the TensorRT plan + parity."""
    result = PartResult(spec.part)
    threshold = ctx.cfg.external_data_threshold_bytes
    ctx.progress(f"exporting {spec.part} to ONNX (fp32)")
    fp32 = export_onnx(
        module, spec, example, ctx.out_dir / f"{stem}.fp32.onnx", external_data_threshold_bytes=threshold
    )
    result.artifacts.append(fp32)
    notes = {"inputs": RANDOM, "sizes": [_sizes(i) for i in inputs]}
    result.parity.append(verify_parity(reference, fp32.path, inputs, "fp32", mask_outputs=mask_outputs, notes=notes))
    final = fp32
    precision = ctx.cfg.precision_for(spec.part)
    if precision == "fp16":
        ctx.progress(f"converting {spec.part} to fp16")
        final = export_fp16_variant(fp32, ctx.out_dir / f"{stem}.fp16.onnx", external_data_threshold_bytes=threshold)
    elif precision == "int8":
        from sammil_deploy.export.int8 import quantize_resnet_int8

        ctx.progress(f"quantising {spec.part} to int8 on {len(calibration)} patches")  # type: ignore[arg-type]
        final = quantize_resnet_int8(fp32, ctx.out_dir / f"{stem}.int8.onnx", calibration)  # type: ignore[arg-type]
    if variant_inputs is not None:
        inputs, notes = variant_inputs, {"inputs": "slide patches", "sizes": [_sizes(i) for i in variant_inputs]}
    if final is not fp32:
        result.artifacts.append(final)
        result.parity.append(
            verify_parity(reference, final.path, inputs, precision, mask_outputs=mask_outputs, notes=notes)
        )
    if ctx.trt:
        result.engine = _build_and_verify_engine(final, spec.part, reference, inputs, mask_outputs, result, ctx)
    return result, final


def _build_and_verify_engine(
    onnx_artifact: ExportArtifact,
    part: str,
    reference: Runner,
    inputs: list[dict[str, np.ndarray]],
    mask_outputs: tuple[str, ...],
    result: PartResult,
    ctx: PartContext,
) -> Any:
    from sammil_deploy.export.tensorrt import TrtEngine, build_engine, profile_from_ranges, trt_runner

    ctx.progress(f"building TensorRT engine for {part}")
    profile = profile_from_ranges(read_metadata(onnx_artifact.path)["inputs"], ctx.cfg.dim_ranges(part))
    cache = Path(ctx.cfg.timing_cache) if ctx.cfg.timing_cache else ctx.out_dir / "timing.cache"
    engine = build_engine(
        onnx_artifact.path,
        onnx_artifact.path.with_suffix(".plan"),
        profile,
        precision=onnx_artifact.precision,
        workspace_bytes=int(ctx.cfg.workspace_gib * 1024**3),
        timing_cache=cache,
        part=part,
    )
    runner = trt_runner(TrtEngine(engine.plan))
    report = verify_parity(
        reference,
        runner,
        inputs,
        onnx_artifact.precision,
        artifact=engine.plan.name,
        mask_outputs=mask_outputs,
        notes={"backend": "tensorrt"},
    )
    result.parity.append(report)
    return engine


def _sizes(inputs: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    return {name: list(value.shape) for name, value in inputs.items()}
