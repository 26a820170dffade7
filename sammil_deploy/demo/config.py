"""The demo's settings, its result and the training recipe it uses (``training/demo.toml`` holds the same values)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sammil_deploy.errors import ConfigError
from sammil_deploy.io_atomic import write_text
from sammil_deploy.runtime.factory import BACKEND_KINDS, GPU_ONLY_KINDS

STAGES = ("data", "weights", "extract", "train", "export", "bundle", "infer", "benchmark")
MODELS = ("sammil", "abmil")
INFER_BACKENDS = tuple(k for k in BACKEND_KINDS if k not in GPU_ONLY_KINDS)  # torch, onnxruntime
SUMMARY_NAME = "demo_summary.json"
# The values of training/demo.toml (tests check they agree): a few epochs, small head, beta lowered for small bags.
DEMO_RECIPE = {
    "model.embed_dim": 128,
    "model.attn_dim": 64,
    "sammil.objective": "paper",
    "sammil.beta": 10.0,
    "train.lr": 1e-3,
    "train.epochs": 100,
    "train.monitor": "loss",
    "train.patience": 0,
    "train.min_epochs": 0,
    "train.threads": 2,
    "data.folds": 3,
    "data.val_fraction": 0.25,
}
Progress = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Demo size and settings.

    Attributes:
        n_slides: Slides in the cohort (one per class is held out of training).
        size_px: Slide width in level-0 pixels (``quick``: smaller slides, fewer patches).
        epochs: Training epochs per fold.
        num_workers: Patch-reader processes.
        batch_size: Patches per encoder call.
        threads: torch / ONNX Runtime CPU threads.
        seed: Seed of the cohort, the random encoder and training.
        benchmark: Run the benchmark stage.
        sam: Segment with the demo's random tiny SAM (``demo.sam``) instead of the fallback, and export it into
            the bundle so ``infer`` runs the SAM chain; its masks are not meaningful.
    """

    n_slides: int = 12
    size_px: int = 9216
    epochs: int = 100
    num_workers: int = 2
    batch_size: int = 16
    threads: int = 2
    seed: int = 0
    benchmark: bool = True
    sam: bool = False

    def __post_init__(self) -> None:
        if self.n_slides < 8:
            raise ConfigError(f"demo needs >= 8 slides (2 held out, 3-fold CV on the rest), got {self.n_slides}")
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1 or self.num_workers < 0:
            raise ConfigError("demo: epochs, batch_size and threads must be >= 1, num_workers >= 0")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """8 smaller slides and 5 epochs: about half the time."""
        return cls(**{"n_slides": 8, "size_px": 6144, "epochs": 5, **overrides})


@dataclass
class StageRecord:
    """One stage: whether it ran or reused earlier output, how long it took, and what it left where."""

    name: str
    status: str
    seconds: float
    artifacts: dict[str, str] = field(default_factory=dict)


@dataclass
class DemoResult:
    """Everything the demo did and found (also written to ``<out>/demo_summary.json``)."""

    out_dir: Path
    stages: list[StageRecord] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    upstream_ran: bool = False  # once a stage runs, every later stage runs too (its inputs changed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {
            "out_dir": str(self.out_dir),
            "random_encoder_weights": True,
            "random_sam_weights": "sam" in self.metrics,
            "stages": [vars(s) for s in self.stages],
            "metrics": self.metrics,
        }


def write_recipe_toml(path: Path) -> Path:
    """``DEMO_RECIPE`` as a recipe TOML file (one table per section)."""
    tables: dict[str, list[str]] = {}
    for key, value in DEMO_RECIPE.items():
        section, name = key.split(".", 1)
        tables.setdefault(section, []).append(f"{name} = {json.dumps(value)}")
    text = "\n\n".join(f"[{section}]\n" + "\n".join(lines) for section, lines in tables.items()) + "\n"
    return write_text(path, text)
