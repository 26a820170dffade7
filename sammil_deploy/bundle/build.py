"""Assemble a bundle folder from a MIL checkpoint, the encoder, SAM weights and exported parts."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sammil_deploy import __version__
from sammil_deploy.bundle.load import load_bundle
from sammil_deploy.bundle.manifest import MANIFEST_NAME, SCHEMA_VERSION, Bundle
from sammil_deploy.config import to_dict
from sammil_deploy.errors import ConfigError
from sammil_deploy.io_atomic import atomic_dir

if TYPE_CHECKING:
    from sammil_deploy.mil.checkpoint import MilCheckpoint
    from sammil_deploy.preprocessing import SlideExtractConfig

log = logging.getLogger(__name__)


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
    from sammil_deploy.mil.checkpoint import checkpoint_paths, load_checkpoint

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir}: bundle folder exists; pass --overwrite or choose another --out")
    if export_dir is not None and not Path(export_dir).is_dir():
        raise ConfigError(f"{export_dir}: export folder not found; run `sammil-deploy export` first")
    ckpt = load_checkpoint(checkpoint)
    with atomic_dir(out_dir) as tmp:
        add = _BundleFiles(tmp)
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
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "sammil_deploy_version": __version__,
            "mil": _mil_section(ckpt, ckpt_rel),
            "encoder": {**encoder_meta, "weights": encoder_rel},
            "preprocess": stored,
            "artifacts": artifacts,
            "files": dict(sorted(add.files.items())),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        load_bundle(tmp)  # refuse an inconsistent bundle before it replaces anything
    return load_bundle(out_dir, verify_hashes=False)


class _BundleFiles:
    """Copies files into the bundle being built and records each one's SHA-256 under its relative path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, str] = {}

    def __call__(self, src: Path, rel: str) -> str:
        from sammil_deploy.features.encoders import file_sha256

        dst = self.root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).resolve() != dst.resolve():
            shutil.copy2(src, dst)
        self.files[rel] = file_sha256(dst)
        return rel


def _mil_section(ckpt: MilCheckpoint, ckpt_rel: str) -> dict[str, Any]:
    """The manifest's ``mil`` table: the checkpoint's file and the facts ``load_bundle`` checks it against."""
    meta = ckpt.meta
    return {
        "checkpoint": ckpt_rel,
        "feature_dim": meta.feature_dim,
        "feature_extractor": meta.feature_extractor,
        "class_names": list(meta.class_names),
        "threshold": meta.threshold,
        "threshold_margin": meta.threshold_margin,
        "threshold_rule": meta.threshold_rule,
        "group_tokens": meta.group_tokens,
        "model": meta.model,
    }


def _bundle_encoder(preprocess: SlideExtractConfig, tmp: Path, add: _BundleFiles) -> tuple[dict[str, Any], str | None]:
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


def _collect_artifacts(export_dir: Path, add: _BundleFiles) -> list[dict[str, Any]]:
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
