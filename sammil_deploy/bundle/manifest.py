"""Inference bundle: one folder with everything ``infer`` loads, checked for consistency before any slide runs.

Layout (paths in the manifest are relative to the folder, so a bundle can be moved or copied)::

    bundle.json                   manifest: schema, versions, preprocessing, encoder, MIL head, artifacts, hashes
    mil/<name>.safetensors|.json  MIL checkpoint (``mil.checkpoint`` format)
    encoder/<name>.safetensors    patch-encoder weights for the PyTorch backend (absent: features need ONNX/TRT)
    sam/<name>.pth                SAM weights for the PyTorch segmenter (only with segmenter ``sam``)
    onnx/*.onnx                   exported parts (``export_all``), any precision
    trt/*.plan + *.plan.json      TensorRT plans and their sidecars

``load_bundle`` refuses a bundle whose parts disagree: a feature dimension or extractor that differs between
the encoder and the MIL checkpoint, an exported ResNet whose preprocessing (input size, mean/std, resize
filter) or weights differ from the bundle's encoder, an exported MIL head from another checkpoint, a plan
built from another ONNX file, a missing file or a changed hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sammil_deploy.errors import BackendError
from sammil_deploy.mil.threshold import Threshold, threshold_from_fields

if TYPE_CHECKING:
    from sammil_deploy.features.encoders import PatchEncoder
    from sammil_deploy.mil.checkpoint import MilCheckpoint
    from sammil_deploy.preprocessing import SlideExtractConfig

MANIFEST_NAME = "bundle.json"
SCHEMA_VERSION = 1
FORMATS = ("onnx", "tensorrt")
MAKE_HINT = "rebuild it with `sammil-deploy make-bundle`"


@dataclass(frozen=True, slots=True)
class BundleArtifact:
    """One exported part in the bundle.

    Attributes:
        part: ``resnet50``, ``mil``, ``sam_encoder`` or ``sam_decoder``.
        format: ``onnx`` or ``tensorrt``.
        precision: ``fp32``, ``fp16`` or ``int8``.
        path: Absolute path of the ``.onnx`` or ``.plan`` file.
        sha256: Its SHA-256.
    """

    part: str
    format: str
    precision: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle (see the module docstring).

    Attributes:
        root: The bundle folder.
        manifest: ``bundle.json`` as read.
        preprocess: Tissue, patch, segment and feature settings the MIL head was trained with (absolute paths).
        encoder: Encoder facts: ``name``, ``dim``, ``input_size_px``, ``mean``, ``std``, ``interpolation``,
            ``weights_sha256``.
        encoder_weights: The encoder's weights file, or None (then features need an exported backend).
        checkpoint_path: MIL ``.safetensors``.
        class_names: Class of each logit.
        threshold: Decision threshold on P(class 1) (binary), or None (argmax); for display.
        group_tokens: Whether the head expects group tokens after the patch rows.
        artifacts: Exported parts.
        threshold_margin: The threshold on the logit margin ``logit_1 - logit_0`` (decisions use it); None in
            bundles made before margins were recorded (then derived from ``threshold``).
        threshold_rule: How the threshold was chosen (``youden``, ``0.5``, ``fixed``), or None.
    """

    root: Path
    manifest: dict[str, Any]
    preprocess: SlideExtractConfig
    encoder: dict[str, Any]
    encoder_weights: Path | None
    checkpoint_path: Path
    class_names: tuple[str, ...]
    threshold: float | None
    group_tokens: bool
    artifacts: tuple[BundleArtifact, ...]
    threshold_margin: float | None = None
    threshold_rule: str | None = None

    @property
    def decision_threshold(self) -> Threshold | None:
        """The binary decision rule of the MIL head (decide on the margin), or None (argmax)."""
        return threshold_from_fields(self.threshold, self.threshold_margin, self.threshold_rule)

    @property
    def feature_dim(self) -> int:
        """D of the encoder's features (== the MIL head's input)."""
        return int(self.encoder["dim"])

    def find(self, part: str, fmt: str, precision: str | None = None) -> BundleArtifact | None:
        """The artifact of ``part`` in ``fmt`` (``precision``, or the most precise one present)."""
        found = [a for a in self.artifacts if a.part == part and a.format == fmt]
        if precision is not None:
            found = [a for a in found if a.precision == precision]
        order = {"fp32": 0, "fp16": 1, "int8": 2}
        return min(found, key=lambda a: order.get(a.precision, 9)) if found else None

    def require(self, part: str, fmt: str, precision: str | None = None) -> BundleArtifact:
        """Like :meth:`find`, but a missing artifact is an error naming what the bundle has and the fix."""
        found = self.find(part, fmt, precision)
        if found is None:
            have = sorted(f"{a.part}/{a.format}/{a.precision}" for a in self.artifacts) or ["none"]
            want = f"{part} as {fmt}" + (f" ({precision})" if precision else "")
            raise BackendError(
                f"{self.root}: bundle has no {want} (it has: {', '.join(have)}); export it with "
                f"`sammil-deploy export` and rebuild the bundle, or use --backend torch"
            )
        return found

    def load_checkpoint(self, device: str = "cpu") -> MilCheckpoint:
        """The MIL head in eval mode (already checked against the encoder at load)."""
        from sammil_deploy.mil.checkpoint import load_checkpoint

        return load_checkpoint(self.checkpoint_path, feature_dim=self.feature_dim, device=device)

    def build_encoder(self) -> PatchEncoder:
        """The PyTorch encoder with the bundle's weights.

        Raises:
            WeightsError: If the bundle carries no encoder weights.
        """
        from sammil_deploy.errors import WeightsError
        from sammil_deploy.features.encoders import create_encoder

        if self.encoder_weights is None:
            raise WeightsError(
                f"{self.root}: bundle has no encoder weights for the PyTorch backend; use --backend onnxruntime "
                "(the bundle's exported ResNet) or rebuild the bundle with --encoder-weights"
            )
        return create_encoder(self.encoder["name"], weights=self.encoder_weights)

    def describe(self) -> dict[str, Any]:
        """Short JSON-able description for reports."""
        return {
            "path": str(self.root),
            "schema_version": self.manifest["schema_version"],
            "built_with": self.manifest.get("sammil_deploy_version"),
            "encoder": self.encoder["name"],
            "encoder_weights_sha256": self.encoder["weights_sha256"],
            "encoder_random_weights": bool(self.encoder.get("random_weights")),
            "checkpoint_sha256": self.manifest["files"][self.manifest["mil"]["checkpoint"]],
            "class_names": list(self.class_names),
            "threshold": self.threshold,
            "threshold_margin": self.threshold_margin,
            "group_tokens": self.group_tokens,
            "artifacts": sorted(f"{a.part}/{a.format}/{a.precision}" for a in self.artifacts),
        }
