"""Consistency checks of a loaded bundle: encoder ↔ MIL checkpoint ↔ exported parts ↔ TensorRT plans.

Every refusal names the part, what disagrees and how to fix it (see ``bundle.manifest``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sammil_deploy.bundle.manifest import MAKE_HINT
from sammil_deploy.errors import BackendError, CheckpointError, ConfigError

if TYPE_CHECKING:
    from sammil_deploy.bundle.manifest import Bundle, BundleArtifact
    from sammil_deploy.mil.checkpoint import MilCheckpoint


def check_consistency(bundle: Bundle) -> None:
    """Encoder ↔ checkpoint ↔ exported parts ↔ plans."""
    from sammil_deploy.mil.checkpoint import load_checkpoint
    from sammil_deploy.runtime.artifacts import read_onnx_metadata, read_sidecar

    enc, where = bundle.encoder, bundle.root
    if enc.get("interpolation") != (bundle.preprocess.features.interpolation or enc.get("interpolation")):
        raise ConfigError(f"{where}: encoder interpolation disagrees with the preprocessing config; {MAKE_HINT}")
    ckpt = load_checkpoint(bundle.checkpoint_path)
    ckpt.check_feature_dim(int(enc["dim"]), source=f"the bundle's {enc['name']} encoder")
    extractor = ckpt.meta.feature_extractor
    if extractor is not None and extractor != enc["name"]:
        raise CheckpointError(
            f"{where}: the MIL checkpoint was trained on {extractor} features but the bundle's encoder is "
            f"{enc['name']}; bundle the encoder the training features came from"
        )
    if tuple(ckpt.meta.class_names) != bundle.class_names or ckpt.meta.decision_threshold != bundle.decision_threshold:
        raise CheckpointError(f"{where}: bundle.json and the MIL checkpoint disagree on classes/threshold; {MAKE_HINT}")
    ckpt_sha = bundle.manifest["files"][bundle.manifest["mil"]["checkpoint"]]
    sam = bundle.preprocess.segment.sam_checkpoint
    sam_sha = bundle.manifest["files"].get(f"sam/{sam.name}") if sam is not None else None
    onnx_sha: dict[tuple[str, str], str] = {}
    for art in bundle.artifacts:
        if art.format == "onnx":
            onnx_sha[(art.part, art.precision)] = art.sha256
            meta = read_onnx_metadata(art.path)
            if art.part == "resnet50":
                _check_resnet(meta, enc, art)
            elif art.part == "mil":
                _check_mil(meta, ckpt, ckpt_sha, art)
            elif art.part.startswith("sam_") and sam_sha is not None and meta.get("source_sha256") != sam_sha:
                raise BackendError(f"{art.path.name}: exported from other SAM weights than the bundle's {sam.name}")
    for art in bundle.artifacts:
        if art.format == "tensorrt":
            car = read_sidecar(art.path)
            source = onnx_sha.get((art.part, art.precision))
            if source is not None and car.source_onnx_sha256 and car.source_onnx_sha256 != source:
                raise BackendError(
                    f"{art.path.name}: plan was built from another ONNX file than the bundle's {art.part} "
                    f"({art.precision}); rebuild the plan from the bundled ONNX"
                )


def _check_resnet(meta: dict[str, Any], enc: dict[str, Any], art: BundleArtifact) -> None:
    pre, cfg = meta.get("preprocessing", {}), meta.get("config", {})
    exported = {
        "dim": cfg.get("dim"),
        "input_size_px": cfg.get("input_size_px"),
        "mean": [round(float(v), 6) for v in pre.get("mean_0_1", [])],
        "std": [round(float(v), 6) for v in pre.get("std_0_1", [])],
        "interpolation": pre.get("resize_interpolation"),
    }
    ours = {
        "dim": enc["dim"],
        "input_size_px": enc["input_size_px"],
        "mean": [round(float(v), 6) for v in enc["mean"]],
        "std": [round(float(v), 6) for v in enc["std"]],
        "interpolation": enc["interpolation"],
    }
    diff = {k: (exported[k], ours[k]) for k in ours if exported[k] != ours[k]}
    if diff:
        shown = "; ".join(f"{k}: ONNX {a!r} vs bundle {b!r}" for k, (a, b) in diff.items())
        raise BackendError(
            f"{art.path.name}: the exported ResNet's preprocessing differs from the bundle's encoder ({shown}); "
            "export the encoder with the same settings the training features used"
        )
    if meta.get("source_sha256") != enc["weights_sha256"]:
        raise BackendError(
            f"{art.path.name}: exported from other weights ({meta.get('source_sha256')}) than the bundle's encoder "
            f"({enc['weights_sha256']}); export with --encoder-weights set to the bundle's encoder weights"
        )


def _check_mil(meta: dict[str, Any], ckpt: MilCheckpoint, ckpt_sha: str, art: BundleArtifact) -> None:
    dims = [t["shape"][-1] for t in meta.get("inputs", []) if t.get("name") == "features"]
    if dims and dims[0] != ckpt.model_config.in_dim:
        raise BackendError(
            f"{art.path.name}: the exported MIL head takes {dims[0]}-dim features but the bundle's checkpoint "
            f"{ckpt.model_config.in_dim}; export the bundle's checkpoint"
        )
    if meta.get("source_sha256") != ckpt_sha:
        raise BackendError(
            f"{art.path.name}: exported from another MIL checkpoint than the bundle's {ckpt.path.name}; "
            "export the bundle's checkpoint (`sammil-deploy export --checkpoint ...`)"
        )
