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

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sammil_deploy.config import from_mapping, to_dict
from sammil_deploy.errors import BackendError, CheckpointError, ConfigError
from sammil_deploy.io_atomic import atomic_dir
from sammil_deploy.mil.threshold import Threshold, threshold_from_fields

if TYPE_CHECKING:
    from sammil_deploy.features.encoders import PatchEncoder
    from sammil_deploy.mil.checkpoint import MilCheckpoint
    from sammil_deploy.pipeline.extract import SlideExtractConfig

log = logging.getLogger(__name__)

MANIFEST_NAME = "bundle.json"
SCHEMA_VERSION = 1
FORMATS = ("onnx", "tensorrt")
_MAKE_HINT = "rebuild it with `sammil-deploy make-bundle`"


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


def make_bundle(
    out_dir: Path,
    checkpoint: Path,
    export_dir: Path | None,
    preprocess: SlideExtractConfig,
    *,
    overwrite: bool = False,
) -> Bundle:
    """Assemble and verify a bundle folder.

    Args:
        out_dir: The bundle folder to create (built as ``<out_dir>.partial`` and renamed when verified).
        checkpoint: Trained MIL checkpoint (``.safetensors``/``.json``/stem).
        export_dir: Output folder of ``sammil-deploy export`` (every ``*.onnx`` and ``*.plan`` in it is taken),
            or None for a PyTorch-only bundle.
        preprocess: The settings the MIL head's training features were extracted with: tissue, patch,
            segment (its SAM checkpoint is copied in) and features (its encoder weights are copied in; with
            ``allow_random`` a seeded random encoder is saved instead, for demos and tests).
        overwrite: Replace an existing bundle folder.

    Returns:
        The verified bundle.

    Raises:
        ConfigError: ``out_dir`` exists (without ``overwrite``) or the inputs are missing.
        CheckpointError, BackendError, WeightsError: The parts do not fit together (nothing is left behind).
    """
    from sammil_deploy import __version__
    from sammil_deploy.features.encoders import file_sha256
    from sammil_deploy.mil.checkpoint import checkpoint_paths, load_checkpoint

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir}: bundle folder exists; pass --overwrite or choose another --out")
    if export_dir is not None and not Path(export_dir).is_dir():
        raise ConfigError(f"{export_dir}: export folder not found; run `sammil-deploy export` first")
    ckpt = load_checkpoint(checkpoint)
    with atomic_dir(out_dir) as tmp:
        files: dict[str, str] = {}

        def add(src: Path, rel: str) -> str:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if Path(src).resolve() != dst.resolve():
                shutil.copy2(src, dst)
            files[rel] = file_sha256(dst)
            return rel

        weights, sidecar = checkpoint_paths(checkpoint)
        ckpt_rel = add(weights, f"mil/{weights.name}")
        if sidecar.is_file():
            add(sidecar, f"mil/{sidecar.name}")
        encoder_meta, encoder_rel = _bundle_encoder(preprocess, tmp, add)
        segment = preprocess.segment
        sam_rel = add(segment.sam_checkpoint, f"sam/{segment.sam_checkpoint.name}") if segment.sam_checkpoint else None
        artifacts = _collect_artifacts(Path(export_dir), add) if export_dir is not None else []
        stored = to_dict(preprocess)
        stored["features"].update(weights=encoder_rel, allow_random=False, download=False)
        stored["features"]["interpolation"] = encoder_meta["interpolation"]
        stored["segment"]["sam_checkpoint"] = sam_rel
        meta = ckpt.meta
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "sammil_deploy_version": __version__,
            "mil": {
                "checkpoint": ckpt_rel,
                "feature_dim": meta.feature_dim,
                "feature_extractor": meta.feature_extractor,
                "class_names": list(meta.class_names),
                "threshold": meta.threshold,
                "threshold_margin": meta.threshold_margin,
                "threshold_rule": meta.threshold_rule,
                "group_tokens": meta.group_tokens,
                "model": meta.model,
            },
            "encoder": {**encoder_meta, "weights": encoder_rel},
            "preprocess": stored,
            "artifacts": artifacts,
            "files": dict(sorted(files.items())),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        load_bundle(tmp)  # refuse an inconsistent bundle before it replaces anything
    return load_bundle(out_dir, verify_hashes=False)


def _bundle_encoder(preprocess: SlideExtractConfig, tmp: Path, add: Any) -> tuple[dict[str, Any], str | None]:
    """Copy (or, with ``allow_random``, save a seeded random) encoder; returns its facts and relative path."""
    import torch

    from sammil_deploy.features.encoders import create_encoder

    feats = preprocess.features
    if feats.weights is None and not feats.allow_random:
        raise ConfigError(
            "the bundle needs the encoder weights the training features came from: pass --encoder-weights PATH "
            "(or --allow-random-weights for a demo bundle)"
        )
    if feats.weights is not None:
        encoder = create_encoder(feats.encoder, weights=feats.weights)
        rel = add(Path(feats.weights), f"encoder/{Path(feats.weights).name}")
    else:
        from safetensors.torch import save_file

        with torch.random.fork_rng():
            torch.manual_seed(0)
            encoder = create_encoder(feats.encoder, allow_random=True)
        src = tmp / "encoder" / f"{feats.encoder}_random.safetensors"
        src.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(src))
        rel = add(src, f"encoder/{src.name}")
        encoder = create_encoder(feats.encoder, weights=src)  # so weights_sha256 names the saved file
    meta = encoder.meta.to_dict()
    meta.pop("weights_source")
    meta["random_weights"] = feats.weights is None or _marked_random(Path(feats.weights))
    meta["interpolation"] = feats.interpolation or encoder.interpolation
    return meta, rel


def _marked_random(weights: Path) -> bool:
    """Whether a ``.safetensors`` file's metadata says ``random_weights`` (the demo's calibrated random encoder)."""
    if weights.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return (f.metadata() or {}).get("random_weights") == "true"


def _collect_artifacts(export_dir: Path, add: Any) -> list[dict[str, Any]]:
    """Every ONNX file (with its external data) and TensorRT plan (with its sidecar) of an export folder."""
    from sammil_deploy.runtime.artifacts import read_onnx_metadata, read_sidecar, sidecar_path

    found: list[dict[str, Any]] = []
    for onnx_path in sorted(export_dir.glob("*.onnx")):
        meta = read_onnx_metadata(onnx_path)
        if "part" not in meta:
            log.warning("%s: not written by sammil-deploy export; left out of the bundle", onnx_path.name)
            continue
        data = onnx_path.with_name(onnx_path.name + ".data")
        if data.is_file():
            add(data, f"onnx/{data.name}")
        rel = add(onnx_path, f"onnx/{onnx_path.name}")
        found.append({"part": meta["part"], "format": "onnx", "precision": meta.get("precision", "fp32"), "path": rel})
    for plan in sorted(export_dir.glob("*.plan")):
        car = read_sidecar(plan)
        add(sidecar_path(plan), f"trt/{sidecar_path(plan).name}")
        rel = add(plan, f"trt/{plan.name}")
        found.append({"part": car.part, "format": "tensorrt", "precision": car.precision, "path": rel})
    if not found:
        raise ConfigError(f"{export_dir}: no exported .onnx or .plan files; run `sammil-deploy export` into it")
    return found


def load_bundle(root: Path, *, verify_hashes: bool = True) -> Bundle:
    """Read ``bundle.json`` and check every part against the others (see the module docstring).

    Args:
        root: The bundle folder.
        verify_hashes: Recompute every file's SHA-256 (seconds for SAM ViT-H; skip only for a just-built bundle).

    Raises:
        ConfigError: Missing folder/manifest, unreadable or newer manifest.
        CheckpointError: Missing/changed files, or a checkpoint that does not fit the encoder.
        BackendError: An exported part that does not fit the encoder, checkpoint or its ONNX source.
    """
    from sammil_deploy.features.encoders import file_sha256
    from sammil_deploy.pipeline.extract import SlideExtractConfig

    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ConfigError(f"{root}: not a bundle ({MANIFEST_NAME} missing); {_MAKE_HINT}")
    try:
        manifest = json.loads(path.read_text())
        version = int(manifest["schema_version"])
        files: dict[str, str] = dict(manifest["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable bundle manifest ({err!r}); {_MAKE_HINT}") from None
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: bundle schema {version} is newer than this sammil-deploy ({SCHEMA_VERSION}); upgrade"
        )
    for rel, sha in files.items():
        target = root / rel
        if not target.is_file():
            raise CheckpointError(f"{root}: bundle file {rel} is missing; copy the whole bundle folder or {_MAKE_HINT}")
        if verify_hashes and file_sha256(target) != sha:
            raise CheckpointError(f"{root}: {rel} changed since the bundle was made (SHA-256 differs); {_MAKE_HINT}")

    def resolve(rel: str | None) -> Path | None:
        if rel is None:
            return None
        if rel not in files:
            raise ConfigError(f"{path}: {rel} is referenced but not listed in 'files'; {_MAKE_HINT}")
        return root / rel

    try:
        mil, enc, stored = manifest["mil"], dict(manifest["encoder"]), json.loads(json.dumps(manifest["preprocess"]))
        stored["features"]["weights"] = resolve(stored["features"].get("weights"))
        stored["segment"]["sam_checkpoint"] = resolve(stored["segment"].get("sam_checkpoint"))
        preprocess = from_mapping(SlideExtractConfig, stored)
        artifacts = tuple(
            BundleArtifact(a["part"], a["format"], a["precision"], resolve(a["path"]), files[a["path"]])  # type: ignore[arg-type]
            for a in manifest["artifacts"]
        )
        bundle = Bundle(
            root=root,
            manifest=manifest,
            preprocess=preprocess,
            encoder=enc,
            encoder_weights=resolve(enc.get("weights")),
            checkpoint_path=resolve(mil["checkpoint"]),  # type: ignore[arg-type]
            class_names=tuple(mil["class_names"]),
            threshold=mil["threshold"],
            threshold_margin=mil.get("threshold_margin"),
            threshold_rule=mil.get("threshold_rule"),
            group_tokens=bool(mil["group_tokens"]),
            artifacts=artifacts,
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{path}: malformed bundle manifest ({err!r}); {_MAKE_HINT}") from None
    from sammil_deploy.bundle.checks import check_consistency

    check_consistency(bundle)
    return bundle
