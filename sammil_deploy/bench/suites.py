"""Benchmark suites: frozen, validated configs loaded from TOML (``benchmarks/suites/<name>.toml``).

A suite says which components to time, on which backend variants (``"backend:precision"``, e.g.
``"torch:fp32"``, ``"ort-cpu:fp32"``, ``"tensorrt:fp16"``) and at which sizes (batch sizes, instance counts,
worker counts), with which timing policy. Unknown keys are rejected with a "did you mean" hint.

    name = "cpu-quick"
    device = "cpu"
    [timing]
    warmup = 2
    iters = 10
    [resnet50]
    variants = ["torch:fp32", "ort-cpu:fp32"]
    sizes = [1, 8]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from sammil_deploy.bench.timing import TimingPolicy
from sammil_deploy.bench.variants import PRECISIONS, parse_variants
from sammil_deploy.config import load_config
from sammil_deploy.errors import ConfigError

COMPONENTS = ("sam_encoder", "mask_generation", "resnet50", "mil", "reading", "extraction", "end_to_end")
SAM_MODELS = ("tiny", "vit_b", "vit_l", "vit_h")
MASK_DECODERS = ("stand_in", "sam")
SUITES_DIR = Path("benchmarks") / "suites"


def _sizes(values: tuple[int, ...], where: str, *, minimum: int = 1) -> None:
    if not values or any(int(v) < minimum for v in values):
        raise ConfigError(f"{where} must be a non-empty list of integers >= {minimum}, got {list(values)}")


@dataclass(frozen=True, slots=True)
class ModelBench:
    """A network (ResNet50-trunc, MIL head) timed on several backend variants at several sizes.

    Attributes:
        enabled: Run this component.
        variants: ``"backend:precision"`` strings; ``torch:fp32`` (eager) is added as the reference if absent.
        sizes: Batch sizes (patches per call) or, for the MIL head, instances per bag.
        timing: This component's timing policy (default: the suite's ``[timing]``).
    """

    enabled: bool = True
    variants: tuple[str, ...] = ("torch:fp32", "ort-cpu:fp32")
    sizes: tuple[int, ...] = (1,)
    timing: TimingPolicy | None = None

    def __post_init__(self) -> None:
        parse_variants(self.variants, "variants")
        _sizes(self.sizes, "sizes")


@dataclass(frozen=True, slots=True)
class SamEncoderBench:
    """The SAM image encoder (random weights of the named sizes) at several batch sizes.

    Attributes:
        enabled: Run this component.
        models: Any of ``tiny`` (test model, 128 px input), ``vit_b``, ``vit_l``, ``vit_h`` (1024 px input).
        variants: As :class:`ModelBench`.
        sizes: Batch sizes (images per call).
        timing: This component's timing policy (default: the suite's ``[timing]``).
    """

    enabled: bool = True
    models: tuple[str, ...] = ("tiny",)
    variants: tuple[str, ...] = ("torch:fp32", "ort-cpu:fp32")
    sizes: tuple[int, ...] = (1,)
    timing: TimingPolicy | None = None

    def __post_init__(self) -> None:
        parse_variants(self.variants, "sam_encoder.variants")
        _sizes(self.sizes, "sam_encoder.sizes")
        bad = [m for m in self.models if m not in SAM_MODELS]
        if not self.models or bad:
            raise ConfigError(f"sam_encoder.models must name some of {', '.join(SAM_MODELS)}, got {list(self.models)}")


@dataclass(frozen=True, slots=True)
class MaskGenerationBench:
    """SAM automatic masks on one SAM image (the slide thumbnail at ``long_side_px``).

    Attributes:
        enabled: Run this component.
        model: SAM size, random weights.
        mask_decoder: ``stand_in``: the many-mask stand-in of :func:`bench.maskgen.many_mask_sam` (tiny only: a disc
            decoder, hundreds of distinct masks, for mask agreement); ``sam``: the model's own prompt encoder and
            two-way-transformer mask decoder with calibrated scores (:func:`bench.maskgen.calibrated_random_sam`),
            so the decoder's cost is SAM's. Default: ``stand_in`` for tiny, ``sam`` otherwise.
        variants: Backends driving the fast generator (``torch``, ``ort-cpu``, ``ort-cuda``, ...).
        reference: Also time upstream ``SamAutomaticMaskGenerator`` on PyTorch, as the speed-up reference.
        long_side_px: SAM image long side (SAM-MIL: 1024).
        points_per_side: Point grid (SAM-MIL: 32).
        crop_n_layers: Crop layers (SAM-MIL: 1).
        points_per_batch: Prompts per decoder call of the fast generator.
        fast_iters: Timed calls of each fast generator, in rounds among themselves (the reference, ~25x slower,
            is timed on its own with ``timing``), so their ratio rests on more samples than the reference allows.
        timing: This component's timing policy (default: the suite's ``[timing]``).
    """

    enabled: bool = True
    model: str = "tiny"
    mask_decoder: str = ""
    variants: tuple[str, ...] = ("torch:fp32", "ort-cpu:fp32")
    reference: bool = True
    long_side_px: int = 1024
    points_per_side: int = 32
    crop_n_layers: int = 1
    points_per_batch: int = 256
    fast_iters: int = 10
    timing: TimingPolicy | None = None

    def __post_init__(self) -> None:
        parse_variants(self.variants, "mask_generation.variants")
        if self.model not in SAM_MODELS:
            raise ConfigError(f"mask_generation.model must be one of {', '.join(SAM_MODELS)}, got {self.model!r}")
        if not self.mask_decoder:
            object.__setattr__(self, "mask_decoder", "stand_in" if self.model == "tiny" else "sam")
        if self.mask_decoder not in MASK_DECODERS or (self.mask_decoder == "stand_in" and self.model != "tiny"):
            raise ConfigError(
                f"mask_generation.mask_decoder must be 'sam', or 'stand_in' with model 'tiny'; got "
                f"{self.mask_decoder!r} with model {self.model!r}"
            )
        for name in ("long_side_px", "points_per_side", "points_per_batch", "fast_iters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"mask_generation.{name} must be >= 1, got {getattr(self, name)}")
        if self.crop_n_layers < 0:
            raise ConfigError(f"mask_generation.crop_n_layers must be >= 0, got {self.crop_n_layers}")


@dataclass(frozen=True, slots=True)
class ReadingBench:
    """The reading floor: 512 px regions read and decoded per second with N reader processes.

    Attributes:
        enabled: Run this component.
        workers: Reader process counts (0 reads in the benchmark process).
        regions: Regions per timed pass.
        patch_px: Region side in level-0 pixels.
        batch_size: Regions per DataLoader batch.
        resize_px: Our rows resize each region to this side (the encoder input), as extraction does; the
            OpenSlide floor rows only read (0: ours do not resize either).
        timing: This component's timing policy (default: the suite's ``[timing]``).
    """

    enabled: bool = True
    workers: tuple[int, ...] = (1, 2)
    regions: int = 128
    patch_px: int = 512
    batch_size: int = 32
    resize_px: int = 224
    timing: TimingPolicy | None = None

    def __post_init__(self) -> None:
        _sizes(self.workers, "reading.workers", minimum=0)
        for name in ("regions", "patch_px", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"reading.{name} must be >= 1, got {getattr(self, name)}")
        if self.resize_px < 0:
            raise ConfigError(f"reading.resize_px must be >= 0, got {self.resize_px}")


@dataclass(frozen=True, slots=True)
class ExtractionBench:
    """Our extraction vs a CLAM-style loop: same slide, same patch coordinates, same encoder weights.

    Attributes:
        enabled: Run this component.
        patches: Patches per timed pass.
        batch_size: Patches per forward pass (both sides).
        workers: Our reader process counts.
        clam_workers: The CLAM-style loop's DataLoader workers; -1 = CLAM's rule (8 on CUDA, 0 on the CPU).
        interpolation: Resize filter of both sides (``bilinear`` is what CLAM's ``transforms.Resize`` does).
        precision: Our precision (``fp32``, ``bf16``; ``fp16`` on CUDA); CLAM-style is always fp32.
        timing: This component's timing policy (default: the suite's ``[timing]``).
    """

    enabled: bool = True
    patches: int = 64
    batch_size: int = 16
    workers: tuple[int, ...] = (2,)
    clam_workers: tuple[int, ...] = (-1,)
    interpolation: str = "bilinear"
    precision: str = "fp32"
    timing: TimingPolicy | None = None

    def __post_init__(self) -> None:
        _sizes(self.workers, "extraction.workers", minimum=0)
        _sizes(self.clam_workers, "extraction.clam_workers", minimum=-1)
        if self.patches < 1 or self.batch_size < 1:
            raise ConfigError(f"extraction.patches and batch_size must be >= 1, got {self.patches}, {self.batch_size}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"extraction.interpolation must be bilinear or bicubic, got {self.interpolation!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"extraction.precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True, slots=True)
class EndToEndBench:
    """One slide end to end with ``infer``: tissue, patches, segments, features, group tokens, MIL head, outputs.

    Attributes:
        enabled: Run this component.
        variants: ``torch`` (any precision), ``ort-cpu``, ``ort-cuda`` or ``tensorrt`` variants.
        workers: Reader processes for the feature stage.
        warm_up_run: Run the slide once untimed per variant first (small slides; a real-sized slide's first
            timed run pays only the sessions' first call).
        torch_reference: Add PyTorch eager fp32 as the reference row when absent (on a real-sized slide on a
            CPU it doubles the component's time; the end-to-end/model-only ratio needs no reference row).
        batch_size: Patches per encoder call.
        timing: This component's timing policy (default: the suite's ``[timing]``).
    """

    enabled: bool = True
    variants: tuple[str, ...] = ("torch:fp32", "ort-cpu:fp32")
    workers: int = 2
    batch_size: int = 16
    warm_up_run: bool = True
    torch_reference: bool = True
    timing: TimingPolicy | None = None

    def __post_init__(self) -> None:
        parse_variants(self.variants, "end_to_end.variants")
        if self.workers < 0 or self.batch_size < 1:
            raise ConfigError(
                f"end_to_end: workers must be >= 0 and batch_size >= 1, got {self.workers}, {self.batch_size}"
            )


@dataclass(frozen=True, slots=True)
class SuiteConfig:
    """A whole suite.

    Attributes:
        name: Suite name (reports carry it).
        description: One line for the report.
        device: ``auto`` (CUDA when visible), ``cpu`` or ``cuda[:N]`` for the torch backends and extraction.
        threads: torch and ONNX Runtime intra-op threads (0: their defaults).
        slide: Slide for reading, extraction and end to end; empty: a synthetic slide written to the work dir.
        synthetic_size_px: Width of that synthetic slide (height 3/4 of it).
        pipeline_slide_px: Width of a real-sized synthetic slide (height 0.8 of it) for reading, extraction and
            end to end, written once and cached (``$SAMMIL_DEPLOY_CACHE`` or ``~/.cache/sammil-deploy``);
            0: those use ``slide`` / the small synthetic slide too.
        seed: Seed of random inputs and weights.
        timing: Warm-up and repeat policy of the model components.
        sam_encoder, mask_generation, resnet50, mil, reading, extraction, end_to_end: Component settings.
    """

    name: str = "custom"
    description: str = ""
    device: str = "auto"
    threads: int = 0
    slide: str = ""
    synthetic_size_px: int = 6144
    pipeline_slide_px: int = 0
    seed: int = 0
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    sam_encoder: SamEncoderBench = field(default_factory=lambda: SamEncoderBench(enabled=False))
    mask_generation: MaskGenerationBench = field(default_factory=lambda: MaskGenerationBench(enabled=False))
    resnet50: ModelBench = field(default_factory=lambda: ModelBench(enabled=False))
    mil: ModelBench = field(default_factory=lambda: ModelBench(enabled=False))
    reading: ReadingBench = field(default_factory=lambda: ReadingBench(enabled=False))
    extraction: ExtractionBench = field(default_factory=lambda: ExtractionBench(enabled=False))
    end_to_end: EndToEndBench = field(default_factory=lambda: EndToEndBench(enabled=False))

    def __post_init__(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"suite device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.threads < 0:
            raise ConfigError(f"suite threads must be >= 0, got {self.threads}")
        if self.synthetic_size_px < 1024:
            raise ConfigError(f"suite synthetic_size_px must be >= 1024, got {self.synthetic_size_px}")
        if self.pipeline_slide_px and self.pipeline_slide_px < 1024:
            raise ConfigError(f"suite pipeline_slide_px must be 0 or >= 1024, got {self.pipeline_slide_px}")

    def enabled_components(self) -> tuple[str, ...]:
        """Components switched on, in pipeline order."""
        return tuple(c for c in COMPONENTS if getattr(self, c).enabled)


def suite_search_paths(name: str) -> list[Path]:
    """Where ``--suite NAME`` is looked for: ``./benchmarks/suites/`` and the source checkout's."""
    checkout = Path(__file__).resolve().parents[2]
    return [Path.cwd() / SUITES_DIR / f"{name}.toml", checkout / SUITES_DIR / f"{name}.toml"]


def available_suites() -> list[str]:
    """Suite names found in the search folders."""
    folders = {p.parent for p in suite_search_paths("x")}
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.toml")})


def resolve_suite(name_or_path: str | Path) -> Path:
    """A suite name (``cpu-quick``) or a ``.toml`` path → the file.

    Raises:
        ConfigError: Not found (lists the searched places and the known suites).
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: suite file not found")
        return path
    candidates = suite_search_paths(str(name_or_path))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"unknown suite {str(name_or_path)!r}: not in {', '.join(str(c.parent) for c in candidates)}; "
        f"known suites: {available_suites() or 'none'}; or pass the path of a suite .toml"
    )


def load_suite(name_or_path: str | Path, *, only: tuple[str, ...] | None = None) -> SuiteConfig:
    """Read a suite TOML (unknown keys rejected), optionally keeping only some components.

    Args:
        name_or_path: Suite name or TOML path (see :func:`resolve_suite`).
        only: Components to keep enabled (names from ``COMPONENTS``; ``-`` or ``_`` accepted).

    Raises:
        ConfigError: Unknown suite, key or component, or an invalid value.
    """
    path = resolve_suite(name_or_path)
    suite = load_config(SuiteConfig, path, prepare=lambda data: {"name": path.stem, **data})
    if only is not None:
        suite = restrict(suite, only)
    return suite


def restrict(suite: SuiteConfig, only: tuple[str, ...]) -> SuiteConfig:
    """``suite`` with every component not in ``only`` disabled.

    Raises:
        ConfigError: Unknown component name, or none left enabled.
    """
    wanted = {c.strip().replace("-", "_") for c in only if c.strip()}
    unknown = sorted(wanted - set(COMPONENTS))
    if unknown:
        raise ConfigError(f"--only: unknown component(s) {unknown}; choose from {', '.join(COMPONENTS)}")
    changes = {c: replace(getattr(suite, c), enabled=False) for c in COMPONENTS if c not in wanted}
    out = replace(suite, **changes)
    if not out.enabled_components():
        raise ConfigError(f"--only {','.join(sorted(wanted))}: none of these is enabled in suite {suite.name!r}")
    return out
