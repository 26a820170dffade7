"""The patch encoder exported to ONNX once per weights and kept in the user's cache (for ONNX Runtime features)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sammil_deploy.features.encoding import cache_root

if TYPE_CHECKING:
    from sammil_deploy.features.encoders import PatchEncoder

log = logging.getLogger(__name__)


def encoder_cache_dir() -> Path:
    """Where :func:`cached_encoder_onnx` keeps exported encoders: ``<cache_root>/encoders``."""
    return cache_root() / "encoders"


def cached_encoder_onnx(encoder: PatchEncoder, cache_dir: Path) -> Path:
    """The encoder exported to an FP32 ONNX file (normalisation folded in), exported once per weights.

    The file is named by the SHA-256 of the weights' bytes (random weights included), so a changed weights file
    never reuses a stale export; it is written to a temporary name and renamed, so concurrent runs are safe.
    """
    import hashlib
    import os
    import tempfile

    from sammil_deploy.export.onnx_export import export_onnx
    from sammil_deploy.export.resnet import random_patches, resnet_spec
    from sammil_deploy.features.encoders import NormalizedEncoder

    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    spec = resnet_spec(encoder)
    path = Path(cache_dir) / f"{encoder.name}-{digest.hexdigest()[:20]}-opset{spec.opset}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to %s (once per weights)", encoder.name, path)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        example = torch.from_numpy(random_patches(encoder.input_size_px, 2, np.random.default_rng(0))["patches"])
        module = NormalizedEncoder(encoder).eval()
        artifact = export_onnx(module, spec, (example,), Path(tmp) / path.name, external_data_threshold_bytes=1 << 40)
        os.replace(artifact.path, path)
    return path
