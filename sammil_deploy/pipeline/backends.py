"""The runtime backends of one inference run, opened once from a bundle and reused for every slide.

``--backend`` (a runtime kind: ``torch``, ``onnxruntime``, ``tensorrt``) is passed as is to
:func:`sammil_deploy.runtime.open_backend` for the patch encoder and the MIL head (and for SAM when the bundle
carries its exported parts). ``torch`` runs the bundle's weights wrapped in the I/O contract the export stage
writes (:class:`~sammil_deploy.features.encoders.NormalizedEncoder`: uint8 NHWC patches in, normalisation inside;
:class:`~sammil_deploy.mil.model.BagClassifier`), so every backend is fed the same arrays. SAM without exported
parts, and the fallback segmenter, run in PyTorch / numpy whatever the backend; ``SlideBackends.stage_backends``
records what ran where.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sammil_deploy.errors import BackendError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sammil_deploy.bundle import Bundle, BundleArtifact
    from sammil_deploy.runtime import Backend
    from sammil_deploy.segment import Segmenter

log = logging.getLogger(__name__)

_FORMAT = {"onnxruntime": "onnx", "tensorrt": "tensorrt"}


@dataclass
class SlideBackends:
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

    def __enter__(self) -> SlideBackends:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release sessions/engines (idempotent)."""
        for backend in (self.features, self.mil, *self._extra):
            backend.close()


def open_slide_backends(
    bundle: Bundle,
    backend: str,
    *,
    device: str = "auto",
    precision: str = "fp32",
    intra_op_threads: int = 0,
) -> SlideBackends:
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
    from sammil_deploy.runtime import GPU_ONLY_KINDS, check_backend_kind
    from sammil_deploy.runtime.devices import resolve_device

    kind = check_backend_kind(backend, option="--backend")
    device = resolve_device(device)
    if kind in GPU_ONLY_KINDS and not device.startswith("cuda"):
        raise ConfigError(f"backend {kind} needs a CUDA device; use --backend onnxruntime or torch on the CPU")
    features = _open_part(bundle, "resnet50", kind, device, precision, intra_op_threads)
    fmt = _FORMAT.get(kind)
    # The MIL head is tiny and its softmax over 100k instances wants FP32: torch never autocasts it, and an
    # exported head is loaded at the asked precision only when the bundle has one.
    mil_precision = "fp32" if fmt is None else precision if bundle.find("mil", fmt, precision) else None
    mil = _open_part(bundle, "mil", kind, device, mil_precision, intra_op_threads)
    backends = SlideBackends(features=features, mil=mil)
    backends.stage_backends = {"features": _label(features), "mil": _label(mil)}
    _load_segmenter(backends, bundle, backend, device, intra_op_threads)
    return backends


def _open_part(
    bundle: Bundle, part: str, kind: str, device: str, precision: str | None, threads: int, *, spin: bool = True
) -> Backend:
    """``part`` of ``bundle`` opened with :func:`open_backend` on the user's backend ``kind``.

    ``torch``: the module built from the bundle's weights; exported kinds: the bundle's artifact of ``part`` at
    ``precision`` (``None``: any).
    """
    from sammil_deploy.runtime import open_backend

    if kind == "torch":
        artifact, options = _torch_module(bundle, part, device, precision or "fp32")
    else:
        artifact, options = _exported_artifact(bundle, part, kind, device, precision, threads, spin)
    return open_backend(kind, artifact, **options)


def _torch_module(bundle: Bundle, part: str, device: str, precision: str) -> tuple[Any, dict[str, Any]]:
    """The wrapped PyTorch module of ``part`` (``resnet50`` or ``mil``) and its torch backend options."""
    if part == "resnet50":
        import torch

        from sammil_deploy.export.resnet import resnet_spec
        from sammil_deploy.features.encoders import NormalizedEncoder

        encoder = bundle.build_encoder()
        module = NormalizedEncoder(encoder).eval()
        if device.startswith("cuda"):
            module = module.to(memory_format=torch.channels_last)  # the NHWC input is channels-last already
        spec = resnet_spec(encoder)
        name = f"{encoder.name} ({bundle.encoder_weights.name})"  # type: ignore[union-attr]
    elif part == "mil":
        from sammil_deploy.export.mil import mil_spec
        from sammil_deploy.mil.model import BagClassifier

        ckpt = bundle.load_checkpoint()
        module = BagClassifier(ckpt.model).eval()
        spec = mil_spec(ckpt, bundle.manifest["files"][bundle.manifest["mil"]["checkpoint"]])
        name = f"mil ({bundle.checkpoint_path.name})"
    else:  # SAM runs in PyTorch through segment/, not as a backend
        raise BackendError(f"no PyTorch backend for bundle part {part!r}")
    return module, {"input_spec": spec.inputs, "output_spec": spec.outputs, "device": device,
                    "precision": precision, "name": name}  # fmt: skip


def _exported_artifact(
    bundle: Bundle, part: str, kind: str, device: str, precision: str | None, threads: int, spin: bool
) -> tuple[Any, dict[str, Any]]:
    """The bundle's artifact of ``part`` for ``kind`` and its backend options."""
    from sammil_deploy.runtime.devices import ort_device_options

    if kind != "tensorrt" and bundle.find(part, _FORMAT[kind], precision) is None:
        refuse_gpu_only_part(bundle.artifacts, part, kind)
    art = bundle.require(part, _FORMAT[kind], precision)
    if kind == "onnxruntime":
        return art.path, {**ort_device_options(device), "intra_op_threads": threads, "spin": spin}
    return art.path, {"device": device}


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


def _load_segmenter(backends: SlideBackends, bundle: Bundle, backend: str, device: str, threads: int) -> None:
    """SAM on exported parts when the backend has them, else PyTorch SAM; or the fallback."""
    from dataclasses import replace

    from sammil_deploy.segment import create_segmenter

    seg = bundle.preprocess.segment
    if seg.resolved_segmenter != "sam":
        backends.segmenter = create_segmenter(seg)
        backends.stage_backends["segmentation"] = "numpy (fallback segmenter)"
        return
    fmt = _FORMAT.get(backend)
    enc_art = bundle.find("sam_encoder", fmt, None) if fmt else None
    dec_art = bundle.find("sam_decoder", fmt, None) if fmt else None
    if enc_art is not None and dec_art is not None:
        # No spinning: the generator's torch post-processing runs between the decoder calls on the same cores.
        encoder = _open_part(bundle, "sam_encoder", backend, device, enc_art.precision, threads, spin=False)
        decoder = _open_part(bundle, "sam_decoder", backend, device, dec_art.precision, threads, spin=False)
        backends._extra.extend([encoder, decoder])
        model_type = _onnx_model_type(enc_art.path) if enc_art.format == "onnx" else "exported"
        backends.segmenter = create_segmenter(
            seg, encoder=encoder, decoder=decoder, device=device, model_type=model_type
        )
        backends.stage_backends["segmentation"] = f"{_label(encoder)} + {_label(decoder)}"
        return
    backends.segmenter = create_segmenter(replace(seg, device=device))
    backends.stage_backends["segmentation"] = f"torch SAM ({seg.generator} generator)" + (
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
