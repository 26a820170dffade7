"""Benchmark backend variants: what a backend name means (a runtime kind run some way) at which precision.

``"ort-cuda:fp16"`` is ONNX Runtime (the runtime kind) on the CUDA provider with the fp16 graph; the runtime's
vocabulary stays the three kinds of :data:`sammil_deploy.runtime.BACKEND_KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sammil_deploy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BenchBackend:
    """What a benchmark backend name means: a runtime kind plus how it is run (not a new kind).

    Attributes:
        kind: One of :data:`sammil_deploy.runtime.BACKEND_KINDS`.
        ort_provider: ``onnxruntime``: the execution provider (``cpu``, ``cuda``, ``tensorrt``).
        compile: ``torch``: wrapped in ``torch.compile``.
    """

    kind: str
    ort_provider: str | None = None
    compile: bool = False


BENCH_BACKENDS = {
    "torch": BenchBackend("torch"),
    "torch-compile": BenchBackend("torch", compile=True),
    "ort-cpu": BenchBackend("onnxruntime", ort_provider="cpu"),
    "ort-cuda": BenchBackend("onnxruntime", ort_provider="cuda"),
    "ort-trt": BenchBackend("onnxruntime", ort_provider="tensorrt"),
    "tensorrt": BenchBackend("tensorrt"),
}
BACKENDS = tuple(BENCH_BACKENDS)
PRECISIONS = ("fp32", "bf16", "fp16")
# Which precisions each backend can run: torch autocasts (bf16; fp16 on CUDA only), ONNX/TensorRT run the
# export stage's fp32 or fp16 graphs (the graph's types set the precision).
BACKEND_PRECISIONS = {
    "torch": ("fp32", "bf16", "fp16"),
    "torch-compile": ("fp32", "bf16", "fp16"),
    "ort-cpu": ("fp32",),
    "ort-cuda": ("fp32", "fp16"),
    "ort-trt": ("fp32", "fp16"),
    "tensorrt": ("fp32", "fp16"),
}


@dataclass(frozen=True, slots=True)
class Variant:
    """One backend at one precision (``"ort-cuda:fp16"``)."""

    backend: str
    precision: str

    @classmethod
    def parse(cls, text: str, *, where: str = "variants") -> Variant:
        """``"backend:precision"`` → Variant (precision defaults to fp32).

        Raises:
            ConfigError: Unknown backend or precision, or a precision the backend cannot run.
        """
        backend, _, precision = str(text).partition(":")
        precision = precision or "fp32"
        if backend not in BACKENDS:
            raise ConfigError(f"{where}: unknown backend {backend!r} in {text!r}; choose from {', '.join(BACKENDS)}")
        if precision not in BACKEND_PRECISIONS[backend]:
            raise ConfigError(
                f"{where}: {backend} cannot run {precision!r} ({text!r}); "
                f"it runs {', '.join(BACKEND_PRECISIONS[backend])}"
            )
        return cls(backend, precision)

    @property
    def runtime(self) -> BenchBackend:
        """The runtime kind (and provider / compile mode) this variant runs on."""
        return BENCH_BACKENDS[self.backend]

    @property
    def is_torch_eager_fp32(self) -> bool:
        """The reference every speed-up is measured against."""
        return self.backend == "torch" and self.precision == "fp32"

    def __str__(self) -> str:
        return f"{self.backend}:{self.precision}"


def parse_variants(values: tuple[str, ...], where: str) -> tuple[Variant, ...]:
    """Parsed ``"backend:precision"`` strings; duplicates are refused."""
    parsed = tuple(Variant.parse(v, where=where) for v in values)
    if len(set(parsed)) != len(parsed):
        raise ConfigError(f"{where}: duplicate variants in {list(values)}")
    return parsed


def reference_first(variants: tuple[str, ...], where: str = "variants") -> tuple[Variant, ...]:
    """Parsed variants with the torch eager fp32 reference first (added if absent)."""
    ref = Variant("torch", "fp32")
    return (ref, *(v for v in parse_variants(variants, where) if v != ref))
