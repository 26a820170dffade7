"""Export configuration: precision, dynamic-axis ranges (TensorRT optimisation profiles), workspace.

Build profiles per GPU class live as TOML recipes in the top-level ``export/`` folder (``h100_h200.toml``,
``a100.toml``, ``l4.toml``, ``jetson_orin.toml``) with one ``[export]`` table; :func:`load_export_config`
reads one and CLI flags override it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from sammil_deploy.config import load_config
from sammil_deploy.errors import ConfigError
from sammil_deploy.export.spec import DEFAULT_OPSET, EXTERNAL_DATA_THRESHOLD_BYTES, PRECISIONS

PARTS = ("sam_encoder", "sam_decoder", "resnet50", "mil")


@dataclass(frozen=True, slots=True)
class DimRange:
    """Range of one dynamic axis: TensorRT builds for ``[min, max]`` and tunes kernels for ``opt``."""

    min: int = 1
    opt: int = 1
    max: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(f"dynamic axis range needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """How to export and build.

    Attributes:
        precision: ``fp32``, ``fp16`` (mixed, fragile ops FP32) or ``int8`` (ResNet50 INT8 Q/DQ, others FP16).
        opset: ONNX opset (>= 17).
        gpu_class: Label of the build profile (``h100_h200``, ``l4`` ...), recorded in reports.
        sam_encoder_batch: Images per encoder call (the automatic mask generator's crops: 1 + 4 with one crop layer).
        sam_decoder_prompts: Point prompts per decoder call (``points_per_batch``; upstream default 64).
        resnet_batch: Patches per ResNet50 call.
        mil_instances: Instances (patches + group tokens) per bag.
        workspace_gib: TensorRT builder workspace limit.
        timing_cache: TensorRT timing cache file (read if present, written after each build); ``""`` for none.
        external_data_threshold_bytes: Initializer bytes above which ONNX weights go to one external file.
        calibration_patches: Patches drawn from the calibration slides for INT8.
    """

    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    gpu_class: str = "generic"
    sam_encoder_batch: DimRange = field(default_factory=lambda: DimRange(1, 5, 8))
    sam_decoder_prompts: DimRange = field(default_factory=lambda: DimRange(1, 64, 256))
    resnet_batch: DimRange = field(default_factory=lambda: DimRange(1, 32, 256))
    mil_instances: DimRange = field(default_factory=lambda: DimRange(1, 4096, 65536))
    workspace_gib: float = 4.0
    timing_cache: str = ""
    external_data_threshold_bytes: int = EXTERNAL_DATA_THRESHOLD_BYTES
    calibration_patches: int = 64

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"export.precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.opset < 17:
            raise ConfigError(f"export.opset must be >= 17, got {self.opset}")
        if self.workspace_gib <= 0:
            raise ConfigError(f"export.workspace_gib must be > 0, got {self.workspace_gib}")
        if self.calibration_patches < 1:
            raise ConfigError(f"export.calibration_patches must be >= 1, got {self.calibration_patches}")

    def dim_ranges(self, part: str) -> dict[str, DimRange]:
        """Range per dynamic axis name of one part's graph (``batch``, ``num_prompts``, ``num_instances``)."""
        ranges = {
            "sam_encoder": {"batch": self.sam_encoder_batch},
            "sam_decoder": {"num_prompts": self.sam_decoder_prompts},
            "resnet50": {"batch": self.resnet_batch},
            "mil": {"num_instances": self.mil_instances},
        }
        if part not in ranges:
            raise ConfigError(f"unknown export part {part!r}; choose from {', '.join(PARTS)}")
        return ranges[part]

    def precision_for(self, part: str) -> str:
        """Precision of one part: INT8 is only offered for ResNet50 (others are FP16 under ``int8``)."""
        if self.precision == "int8":
            return "int8" if part == "resnet50" else "fp16"
        return self.precision


def load_export_config(path: Path | None) -> ExportConfig:
    """Read the ``[export]`` table of a build-profile TOML (defaults when ``path`` is None).

    Raises:
        ConfigError: Missing file, bad TOML, unknown keys (with a hint) or invalid values.
    """
    hint = "see export/h100_h200.toml for the layout"
    return load_config(ExportConfig, None if path is None else Path(path), table="export", table_hint=hint,
                       section="export")  # fmt: skip


def with_size_limits(
    cfg: ExportConfig, *, max_batch: int | None = None, max_instances: int | None = None
) -> ExportConfig:
    """Cap the ResNet50 batch and the MIL bag axes (TensorRT profile max; min and opt follow when larger)."""

    def capped(current: DimRange, maximum: int | None) -> DimRange:
        if maximum is None:
            return current
        return DimRange(min=min(current.min, maximum), opt=min(current.opt, maximum), max=maximum)

    return dataclasses.replace(
        cfg, resnet_batch=capped(cfg.resnet_batch, max_batch), mil_instances=capped(cfg.mil_instances, max_instances)
    )
