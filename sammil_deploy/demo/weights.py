"""The demo's encoder: seeded random ResNet50-trunc weights with BatchNorm statistics calibrated on demo patches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sammil_deploy.io_atomic import save_safetensors


def random_encoder(path: Path, seed: int, calibration_slides: list[Path], extract_cfg: Any) -> Path:
    """Seeded random ResNet50-trunc weights (the file name says RANDOM; features are not meaningful).

    Random weights keep BatchNorm's initial running statistics (mean 0, variance 1), under which activations
    grow block after block: every feature becomes a large constant offset with little variation between
    patches, and a MIL head trained on that saturates. Re-estimating the BatchNorm statistics on demo patches
    (weights untouched) gives features on the scale of a trained network's.
    """
    import torch

    from sammil_deploy.features.encoders import create_encoder

    if not path.is_file():
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoder = create_encoder("resnet50_trunc", allow_random=True)
        calibrate_batchnorm(encoder, calibration_slides, extract_cfg)
        state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
        save_safetensors(path, state, metadata={"random_weights": "true"})  # bundles and reports say so
    return path


def calibrate_batchnorm(encoder: Any, slides: list[Path], extract_cfg: Any, patches_per_slide: int = 16) -> None:
    """Set every BatchNorm's running mean/variance to their averages over patches spread across ``slides``."""
    import numpy as np
    import torch

    from sammil_deploy.features.preprocess_ops import PatchTransform, normalize_batch
    from sammil_deploy.patching import make_patch_grid
    from sammil_deploy.patching.dataset import PatchDataset
    from sammil_deploy.slide import open_slide
    from sammil_deploy.tissue import detect_tissue

    transform = PatchTransform(encoder.input_size_px, encoder.interpolation)
    patches = []
    for slide in slides:
        with open_slide(slide) as reader:
            grid = make_patch_grid(reader.info, detect_tissue(reader, extract_cfg.tissue), extract_cfg.patch)
        rows = np.unique(np.linspace(0, len(grid) - 1, min(patches_per_slide, len(grid))).astype(int))
        dataset = PatchDataset(
            slide, grid.coords_level0_xy[rows], grid.patch_size_level0_px, grid.patch_level, transform,
            read_size_px=grid.read_size_px,
        )  # fmt: skip
        patches += [dataset[i][0] for i in range(len(dataset))]
        dataset.close()
    batch = normalize_batch(torch.stack(patches), encoder.mean, encoder.std)
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    encoder.train()
    with torch.no_grad():
        for chunk in batch.split(32):
            encoder(chunk)
    encoder.eval()
    for norm in norms:
        norm.momentum = 0.1
