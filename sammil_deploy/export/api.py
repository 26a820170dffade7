"""``export_all``: every part to ONNX (and optionally TensorRT), each checked against PyTorch.

One call does, per requested part: build the PyTorch model from the user's weights, export FP32 ONNX, derive
the requested precision (FP16 graph pass or INT8 Q/DQ), check parity on fresh random inputs at two sizes of
each dynamic axis (and on real slide content when a slide is given), then with ``trt`` build a plan from the
precision's ONNX and check that too. A manifest ``export_manifest.json`` describes the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sammil_deploy import __version__
from sammil_deploy.config import to_dict
from sammil_deploy.errors import ConfigError, WeightsError
from sammil_deploy.export import parts as parts_mod
from sammil_deploy.export.config import PARTS, ExportConfig
from sammil_deploy.export.parts import PartResult
from sammil_deploy.io_atomic import write_json

log = logging.getLogger(__name__)

MANIFEST_NAME = "export_manifest.json"
Progress = Callable[[str], None]


@dataclass
class ExportReport:
    """What ``export_all`` produced."""

    out_dir: Path
    config: ExportConfig
    parts: list[PartResult] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def passed(self) -> bool:
        """All parts passed parity."""
        return all(p.passed for p in self.parts)

    def failures(self) -> list[str]:
        """Summaries of the failed parity checks."""
        return [r.summary() for p in self.parts for r in p.parity if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (also the manifest's content)."""
        return {
            "sammil_deploy_version": __version__,
            "out_dir": str(self.out_dir),
            "passed": self.passed,
            "config": to_dict(self.config),
            "parts": [p.to_dict() for p in self.parts],
        }


def parse_parts(only: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"sam-encoder,mil"`` → ``("sam_encoder", "mil")`` in pipeline order; None → all parts.

    Raises:
        ConfigError: Unknown part name.
    """
    if only is None:
        return PARTS
    names = only.split(",") if isinstance(only, str) else list(only)
    wanted = {n.strip().replace("-", "_") for n in names if n.strip()}
    unknown = sorted(wanted - set(PARTS))
    if unknown or not wanted:
        shown = ", ".join(p.replace("_", "-") for p in PARTS)
        raise ConfigError(f"--only: unknown part(s) {unknown or names}; choose from {shown}")
    return tuple(p for p in PARTS if p in wanted)


def export_all(
    checkpoint: Path | None,
    sam_checkpoint: Path | None,
    sam_model: str,
    encoder_weights: Path | None,
    out_dir: Path,
    cfg: ExportConfig,
    *,
    only: str | Iterable[str] | None = None,
    trt: bool = False,
    allow_random_weights: bool = False,
    parity_slide: Path | None = None,
    calibration_slides: Sequence[Path] = (),
    seed: int = 0,
    progress: Progress | None = None,
) -> ExportReport:
    """Export the requested parts to ``out_dir`` and check each against PyTorch.

    Args:
        checkpoint: Trained MIL checkpoint (``.safetensors`` + ``.json``), needed for part ``mil``.
        sam_checkpoint: SAM ``.pth``, needed for the SAM parts unless ``allow_random_weights``.
        sam_model: ``vit_h``/``vit_l``/``vit_b``/``tiny``/``auto``.
        encoder_weights: ResNet-50 weights, needed for ``resnet50`` unless ``allow_random_weights``.
        out_dir: Output folder (created).
        cfg: Precision, dynamic-axis ranges, workspace.
        only: Subset of parts (``sam-encoder,sam-decoder,resnet50,mil``).
        trt: Also build TensorRT plans (fails before any work without TensorRT and a GPU).
        allow_random_weights: Export randomly initialised SAM/ResNet50 (demos and tests).
        parity_slide: A slide whose content is also used for parity (ResNet50 patches, SAM image).
        calibration_slides: Slides to draw INT8 calibration patches from (required for ``int8``).
        seed: Seed of the random parity inputs.
        progress: Called with a short message before each step.

    Returns:
        The report (``passed`` is False if any parity check failed; artifacts are still written).

    Raises:
        ConfigError, WeightsError, CheckpointError: Missing or conflicting inputs, before any export work.
        MissingDependencyError: ``trt`` without TensorRT/GPU, before any export work.
    """
    parts = parse_parts(only)
    _check_inputs(
        parts, checkpoint, sam_checkpoint, sam_model, encoder_weights, cfg, allow_random_weights, calibration_slides
    )
    if trt:
        from sammil_deploy.export.tensorrt import require_tensorrt_gpu

        require_tensorrt_gpu()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir=out_dir, config=cfg)
    context = parts_mod.PartContext(
        out_dir=out_dir,
        cfg=cfg,
        rng=np.random.default_rng(seed),
        parity_slide=parity_slide,
        calibration_slides=tuple(calibration_slides),
        trt=trt,
        progress=progress or (lambda message: log.info("%s", message)),
    )
    sam = None
    if "sam_encoder" in parts or "sam_decoder" in parts:
        sam, sam_type, sam_sha = parts_mod.load_sam(sam_model, sam_checkpoint, context)
        report.parts.extend(parts_mod.export_sam(sam, sam_type, sam_sha, parts, context))
    if "resnet50" in parts:
        report.parts.append(parts_mod.export_resnet(encoder_weights, allow_random_weights, context))
    if "mil" in parts:
        report.parts.append(parts_mod.export_mil(checkpoint, context))  # type: ignore[arg-type]
    report.manifest = _write_manifest(out_dir, report)
    return report


def _check_inputs(
    parts: tuple[str, ...],
    checkpoint: Path | None,
    sam_checkpoint: Path | None,
    sam_model: str,
    encoder_weights: Path | None,
    cfg: ExportConfig,
    allow_random: bool,
    calibration_slides: Sequence[Path],
) -> None:
    """Every "missing input" error is raised here, before any model is built or file written."""
    if "mil" in parts and checkpoint is None:
        raise ConfigError("part mil needs --checkpoint CKPT (the trained .safetensors); or leave mil out with --only")
    if checkpoint is not None and "mil" in parts:
        from sammil_deploy.mil.checkpoint import checkpoint_paths

        weights, _ = checkpoint_paths(checkpoint)
        if not weights.is_file():
            raise WeightsError(f"{weights}: MIL checkpoint not found; pass the .safetensors written by training")
    sam_parts = {"sam_encoder", "sam_decoder"} & set(parts)
    if sam_parts and sam_checkpoint is None and not allow_random:
        raise WeightsError(
            "SAM parts need --sam-checkpoint PATH (sam_vit_h_4b8939.pth ...), or --allow-random-weights for a demo"
        )
    if sam_parts and sam_checkpoint is None and sam_model == "auto":
        raise ConfigError("--sam-model auto needs --sam-checkpoint to detect the type; name the model (vit_h ...)")
    if sam_checkpoint is not None and sam_parts and not Path(sam_checkpoint).is_file():
        raise WeightsError(f"{sam_checkpoint}: SAM checkpoint not found; check --sam-checkpoint")
    if "resnet50" in parts and encoder_weights is None and not allow_random:
        raise WeightsError(
            "part resnet50 needs --encoder-weights PATH (torchvision ResNet-50 state dict), or "
            "--allow-random-weights for a demo"
        )
    if encoder_weights is not None and "resnet50" in parts and not Path(encoder_weights).is_file():
        raise WeightsError(f"{encoder_weights}: encoder weights not found; check --encoder-weights")
    if cfg.precision == "int8":
        if "resnet50" not in parts:
            raise ConfigError("--precision int8 applies to resnet50 only; include resnet50 or use fp16")
        if not calibration_slides:
            raise ConfigError("--precision int8 needs --calibration-slide PATH (slides to draw calibration patches)")
        missing = [str(p) for p in calibration_slides if not Path(p).is_file()]
        if missing:
            raise ConfigError(f"calibration slide(s) not found: {', '.join(missing)}")


def _write_manifest(out_dir: Path, report: ExportReport) -> Path:
    return write_json(out_dir / MANIFEST_NAME, report.to_dict())
