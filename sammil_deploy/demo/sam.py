"""The demo's SAM chain (``sammil-deploy demo --sam``): a tiny SAM with RANDOM weights, end to end.

No SAM weights can be downloaded here, so the demo's SAM is the tiny test architecture (128 px encoder input)
with seeded random weights, its mask logits x100 and IoU head +0.6 so that masks pass SAM-MIL's 0.6 thresholds
(unscaled random weights keep none). Its masks are blobs that mean nothing; what the demo shows is the chain:
``extract`` segments with it (fast generator, PyTorch), the export stage writes its encoder and point decoder to
ONNX (checked against PyTorch), the bundle carries the .pth, and ``infer`` runs the SAM chain through the same
backend as the encoder (ONNX Runtime: exported graphs; PyTorch: the modules), reporting masks, encoder passes,
decoder prompts and per-sub-stage seconds. Training and inference see the same SAM, so the group tokens the
head learned on are the ones it gets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sammil_deploy.errors import ConfigError
from sammil_deploy.io_atomic import atomic_path, write_json

SAM_WEIGHTS_NAME = "sam_tiny_RANDOM_calibrated.pth"
MARKER_NAME = "demo_segmenter.json"
NOTICE = (
    "SAM: a tiny SAM with RANDOM weights (logits scaled so masks pass the thresholds): its masks are not "
    "meaningful; the demo shows the SAM chain running (extract, export, infer through ONNX Runtime)"
)


def write_random_sam(path: Path, seed: int) -> Path:
    """Save the demo's calibrated random tiny SAM as a ``.pth`` state dict (loadable with weights_only)."""
    import torch

    from sammil_deploy.bench.maskgen import calibrated_random_sam

    with atomic_path(path) as tmp:
        torch.save(calibrated_random_sam("tiny", seed).state_dict(), tmp)
    return path


def segment_overrides(sam_weights: Path | None) -> dict[str, Any]:
    """``segment.*`` extract overrides: the fallback segmenter, or the demo SAM (checkpoint set first)."""
    if sam_weights is None:
        return {"segment.segmenter": "fallback"}
    return {"segment.sam_checkpoint": sam_weights, "segment.sam_model": "tiny", "segment.segmenter": "sam"}


def claim_folder(out_dir: Path, segmenter: str) -> None:
    """Record which segmenter this demo folder uses; refuse a folder made with the other one.

    Raises:
        ConfigError: If ``out_dir`` holds a demo made with another segmenter (its stages would be reused).
    """
    marker = out_dir / MARKER_NAME
    if marker.is_file():
        recorded = json.loads(marker.read_text()).get("segmenter")
        if recorded != segmenter:
            flag = "with --sam" if recorded == "sam" else "without --sam"
            raise ConfigError(
                f"{out_dir}: this demo folder was made {flag} (segmenter {recorded!r}); its stages would be reused "
                f"for segmenter {segmenter!r}: rerun {flag} or use another --out"
            )
        return
    write_json(marker, {"segmenter": segmenter})


def sam_metrics(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per held-out slide and backend: masks, encoder passes, decoder prompts, SAM seconds (from the reports)."""
    out: dict[str, Any] = {}
    for key, report in reports.items():
        counts, timings = report.get("counts", {}), report.get("timings_s", {})
        out[key] = {
            "segmenter": report.get("segmenter"),
            "backend": report.get("backends", {}).get("segmentation"),
            "masks": counts.get("masks"),
            "segments": counts.get("segments"),
            "encoder_passes": counts.get("sam_encoder_passes"),
            "decoder_prompts": counts.get("sam_decoder_prompts"),
            "seconds": {k.removeprefix("segmentation."): v for k, v in timings.items() if k.startswith("segmentation")},
        }
    return out
