"""The networks of one inference run, loaded once from a bundle on the chosen backend and reused for every slide.

``--backend`` selects the runtime of the patch encoder and the MIL head (and of SAM when the bundle carries its
exported parts): ``torch`` runs the bundle's weights wrapped in the same I/O contract the export stage writes
(``export.resnet.NormalizedEncoder``: uint8 NHWC patches in, normalisation inside; ``export.mil.MilForExport``),
so every backend is fed the same arrays. SAM without exported parts, and the fallback segmenter, run in PyTorch /
numpy whatever the backend; ``SlideModels.stage_backends`` records what ran where.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sammil_deploy.errors import BackendError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sammil_deploy.pipeline.bundle import Bundle, BundleArtifact
    from sammil_deploy.runtime import Backend
    from sammil_deploy.segment import Segmenter

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_FORMAT = {"onnxruntime": "onnx", "tensorrt": "tensorrt"}


@dataclass
class SlideModels:
    """Loaded networks; close them with :meth:`close` (or use as a context manager).

    Attributes:
        features: Patch encoder backend: ``patches (B, S, S, 3) uint8 -> features (B, D) float32``.
        mil: MIL head backend: ``features (N + G, D) float32 -> logits, probabilities, attention``.
        segmenter: The slide segmenter (``segment.create_segmenter``): SAM on the bundle's exported parts (ONNX
            Runtime / TensorRT) when the backend has them, else PyTorch SAM, or the fallback.
        stage_backends: What ran each stage, e.g. ``{"features": "onnxruntime CPUExecutionProvider"}``.
    """

    features: Backend
    mil: Backend
    segmenter: Segmenter | None = None
    stage_backends: dict[str, str] = field(default_factory=dict)
    _extra: list[Backend] = field(default_factory=list)

    def __enter__(self) -> SlideModels:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release sessions/engines (idempotent)."""
        for backend in (self.features, self.mil, *self._extra):
            backend.close()


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when visible, else ``cpu``.

    Raises:
        ConfigError: If CUDA is asked for but not available.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available; use --device cpu or auto")
    return device


def load_models(
    bundle: Bundle,
    backend: str,
    *,
    device: str = "auto",
    precision: str = "fp32",
    intra_op_threads: int = 0,
) -> SlideModels:
    """Load the encoder, the MIL head and (if it runs) SAM from ``bundle`` on ``backend``.

    Args:
        bundle: A loaded bundle.
        backend: ``torch``, ``onnxruntime`` or ``tensorrt``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``torch``: autocast precision (``fp32``, ``bf16``, ``fp16`` on CUDA); exported backends: the
            precision of the artifacts to load (``fp32``, ``fp16``, ``int8`` for the encoder).
        intra_op_threads: ONNX Runtime CPU threads (0: its default).

    Raises:
        ConfigError: Unknown backend, unavailable device, fp16 on CPU.
        BackendError: The bundle lacks an artifact for this backend/precision.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
    device = resolve_device(device)
    if backend == "tensorrt" and not device.startswith("cuda"):
        raise ConfigError("backend tensorrt needs a CUDA device; use --backend onnxruntime or torch on the CPU")
    if backend == "torch":
        features, mil = _torch_backends(bundle, device, precision)
    else:
        features = _exported(bundle, "resnet50", backend, device, precision, intra_op_threads)
        mil_precision = precision if bundle.find("mil", _FORMAT[backend], precision) else None
        mil = _exported(bundle, "mil", backend, device, mil_precision, intra_op_threads)
    models = SlideModels(features=features, mil=mil)
    models.stage_backends = {"features": _label(features), "mil": _label(mil)}
    _load_segmenter(models, bundle, backend, device, intra_op_threads)
    return models


def _torch_backends(bundle: Bundle, device: str, precision: str) -> tuple[Backend, Backend]:
    import torch

    from sammil_deploy.export.mil import MilForExport, mil_spec
    from sammil_deploy.export.resnet import NormalizedEncoder, resnet_spec
    from sammil_deploy.runtime import open_backend

    encoder = bundle.build_encoder()
    module = NormalizedEncoder(encoder).eval()
    if device.startswith("cuda"):
        module = module.to(memory_format=torch.channels_last)  # the NHWC input is channels-last already
    spec = resnet_spec(encoder)
    features = open_backend(
        "torch", module, input_spec=spec.inputs, output_spec=spec.outputs, device=device, precision=precision,
        name=f"{encoder.name} ({bundle.encoder_weights.name})",  # type: ignore[union-attr]
    )  # fmt: skip
    ckpt = bundle.load_checkpoint()
    mspec = mil_spec(ckpt, bundle.manifest["files"][bundle.manifest["mil"]["checkpoint"]])
    # The MIL head is tiny and its softmax over 100k instances wants FP32: it never autocasts.
    mil = open_backend(
        "torch", MilForExport(ckpt.model).eval(), input_spec=mspec.inputs, output_spec=mspec.outputs,
        device=device, precision="fp32", name=f"mil ({bundle.checkpoint_path.name})",
    )  # fmt: skip
    return features, mil


def _exported(
    bundle: Bundle, part: str, backend: str, device: str, precision: str | None, threads: int, *, spin: bool = True
) -> Backend:
    from sammil_deploy.runtime import open_backend

    if backend != "tensorrt" and bundle.find(part, _FORMAT[backend], precision) is None:
        refuse_gpu_only_part(bundle.artifacts, part, backend)
    art = bundle.require(part, _FORMAT[backend], precision)
    if backend == "onnxruntime":
        providers = "cpu" if device == "cpu" else "cuda" if device.startswith("cuda") else "auto"
        device_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        return open_backend("onnxruntime", art.path, providers=providers, device_id=device_id,
                            intra_op_threads=threads, spin=spin)  # fmt: skip
    return open_backend("tensorrt", art.path, device=device if ":" in device else "cuda:0")


def refuse_gpu_only_part(artifacts: Sequence[BundleArtifact], part: str, backend: str) -> None:
    """Name the GPU when a bundle has ``part`` only as TensorRT plans (a bundle built for a GPU, used elsewhere).

    Raises:
        BackendError: ``part`` exists in the bundle only as TensorRT plans.
    """
    plans = sorted(f"{a.precision} {a.path.name}" for a in artifacts if a.part == part and a.format == "tensorrt")
    if plans and not any(a.part == part and a.format != "tensorrt" for a in artifacts):
        raise BackendError(
            f"this bundle was built for a GPU: its {part} is only a TensorRT plan ({', '.join(plans)}), which runs "
            f"on a CUDA GPU with TensorRT, not with --backend {backend}; use --backend torch (the bundle carries the "
            "weights), or rebuild the bundle from an export folder that kept the .onnx files"
        )


def _load_segmenter(models: SlideModels, bundle: Bundle, backend: str, device: str, threads: int) -> None:
    """SAM on exported parts when the backend has them, else PyTorch SAM; or the fallback."""
    from dataclasses import replace

    from sammil_deploy.segment import create_segmenter

    seg = bundle.preprocess.segment
    if seg.resolved_segmenter != "sam":
        models.segmenter = create_segmenter(seg)
        models.stage_backends["segmentation"] = "numpy (fallback segmenter)"
        return
    fmt = _FORMAT.get(backend)
    enc_art = bundle.find("sam_encoder", fmt, None) if fmt else None
    dec_art = bundle.find("sam_decoder", fmt, None) if fmt else None
    if enc_art is not None and dec_art is not None:
        # No spinning: the generator's torch post-processing runs between the decoder calls on the same cores.
        encoder = _exported(bundle, "sam_encoder", backend, device, enc_art.precision, threads, spin=False)
        decoder = _exported(bundle, "sam_decoder", backend, device, dec_art.precision, threads, spin=False)
        models._extra.extend([encoder, decoder])
        model_type = _onnx_model_type(enc_art.path) if enc_art.format == "onnx" else "exported"
        models.segmenter = create_segmenter(seg, encoder=encoder, decoder=decoder, device=device, model_type=model_type)
        models.stage_backends["segmentation"] = f"{_label(encoder)} + {_label(decoder)}"
        return
    models.segmenter = create_segmenter(replace(seg, device=device))
    models.stage_backends["segmentation"] = f"torch SAM ({seg.generator} generator)" + (
        "" if backend == "torch" else f"; the bundle has no exported SAM for {backend}"
    )


def _onnx_model_type(path: Any) -> str:
    from sammil_deploy.runtime.artifacts import read_onnx_metadata

    return str(read_onnx_metadata(path).get("config", {}).get("model_type", "exported"))


def _label(backend: Backend) -> str:
    details = backend.describe()
    providers = details.get("providers")
    where = ",".join(providers) if providers else backend.device
    return f"{backend.kind} {backend.artifact} [{where}, {details.get('precision', 'fp32')}]"
