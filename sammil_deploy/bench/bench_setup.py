"""What every component benchmark of one run shares: device, threads, timing policy, work folder, slide."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sammil_deploy.bench.backends import ExportCache
from sammil_deploy.bench.timing import Timer, TimingPolicy, make_timer

Progress = Callable[[str], None]


@dataclass
class BenchSetup:
    """Shared state of one benchmark run.

    Attributes:
        device: Resolved torch device (``cpu`` or ``cuda:N``).
        threads: torch / ONNX Runtime intra-op threads (0: their defaults).
        timing: Warm-up and repeat policy.
        work_dir: Scratch folder (exports, synthetic slide).
        slide: Slide used by mask generation (and by the pipeline components without ``pipeline_slide``).
        pipeline_slide: Slide of reading, extraction and end to end (default: ``slide``).
        seed: Seed of random inputs.
        progress: Called with a short message before each measurement.
        exports: Per-run ONNX/TensorRT artifacts.
    """

    device: str
    threads: int
    timing: TimingPolicy
    work_dir: Path
    slide: Path
    seed: int = 0
    progress: Progress = field(default=lambda _message: None)
    pipeline_slide: Path | None = None
    exports: ExportCache = field(init=False)

    def __post_init__(self) -> None:
        self.exports = ExportCache(self.work_dir / "exports")
        if self.pipeline_slide is None:
            self.pipeline_slide = self.slide

    @property
    def timer(self) -> Timer:
        """CUDA-event timer on a GPU device, wall clock on the CPU."""
        return make_timer(self.device)

    def rng(self, salt: int) -> np.random.Generator:
        """A generator seeded by the run seed and a per-component salt (inputs do not depend on run order)."""
        return np.random.default_rng([self.seed, salt])

    def encoder_weights(self) -> Path:
        """Seeded random ResNet50-trunc weights saved once per run (``.safetensors``; speed only, not features).

        Saved to a file so every component builds the very same encoder and exports carry its SHA-256, which
        lets the end-to-end benchmark bundle the exported graphs with the encoder they came from.
        """
        path = self.work_dir / "weights" / "resnet50_trunc_random.safetensors"
        if not path.is_file():
            import torch

            from sammil_deploy.features.encoders import create_encoder
            from sammil_deploy.io_atomic import save_safetensors

            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                encoder = create_encoder("resnet50_trunc", allow_random=True)
            save_safetensors(path, {k: v.contiguous() for k, v in encoder.state_dict().items()})
        return path

    def mil_checkpoint(self) -> Path:
        """A seeded random SAM-MIL head checkpoint (1024 -> 512, attention 128, 2 classes), saved once per run."""
        from sammil_deploy.mil.checkpoint import checkpoint_paths, make_meta, save_checkpoint

        stem = self.work_dir / "weights" / "mil_random"
        weights, _ = checkpoint_paths(stem)
        if not weights.is_file():
            import torch

            from sammil_deploy.mil.config import ModelConfig
            from sammil_deploy.mil.model import build_model

            cfg = ModelConfig()
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                model = build_model(cfg)
            meta = make_meta(
                cfg, class_names=("normal", "tumor"), group_tokens=True, feature_extractor="resnet50_trunc"
            )
            save_checkpoint(stem, model, meta)
        return weights
