"""Read a bundle folder's ``bundle.json`` and verify every file and part (see ``bundle.manifest``)."""

from __future__ import annotations

import json
from pathlib import Path

from sammil_deploy.bundle.checks import check_consistency
from sammil_deploy.bundle.manifest import MAKE_HINT, MANIFEST_NAME, SCHEMA_VERSION, Bundle, BundleArtifact
from sammil_deploy.config import from_mapping
from sammil_deploy.errors import CheckpointError, ConfigError


def load_bundle(root: Path, *, verify_hashes: bool = True) -> Bundle:
    """Read ``bundle.json`` and check every part against the others (the list is in ``bundle.manifest``).

    Args:
        root: The bundle folder.
        verify_hashes: Recompute every file's SHA-256 (seconds for SAM ViT-H; skip only for a just-built bundle).

    Raises:
        ConfigError: Missing folder/manifest, unreadable or newer manifest.
        CheckpointError: Missing/changed files, or a checkpoint that does not fit the encoder.
        BackendError: An exported part that does not fit the encoder, checkpoint or its ONNX source.
    """
    from sammil_deploy.features.encoders import file_sha256
    from sammil_deploy.preprocessing import SlideExtractConfig

    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ConfigError(f"{root}: not a bundle ({MANIFEST_NAME} missing); {MAKE_HINT}")
    try:
        manifest = json.loads(path.read_text())
        version = int(manifest["schema_version"])
        files: dict[str, str] = dict(manifest["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable bundle manifest ({err!r}); {MAKE_HINT}") from None
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: bundle schema {version} is newer than this sammil-deploy ({SCHEMA_VERSION}); upgrade"
        )
    for rel, sha in files.items():
        target = root / rel
        if not target.is_file():
            raise CheckpointError(f"{root}: bundle file {rel} is missing; copy the whole bundle folder or {MAKE_HINT}")
        if verify_hashes and file_sha256(target) != sha:
            raise CheckpointError(f"{root}: {rel} changed since the bundle was made (SHA-256 differs); {MAKE_HINT}")

    def resolve(rel: str | None) -> Path | None:
        if rel is None:
            return None
        if rel not in files:
            raise ConfigError(f"{path}: {rel} is referenced but not listed in 'files'; {MAKE_HINT}")
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
        raise ConfigError(f"{path}: malformed bundle manifest ({err!r}); {MAKE_HINT}") from None
    check_consistency(bundle)
    return bundle
