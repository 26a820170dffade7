"""ResNet50-trunc export with the pixel normalisation folded into the graph.

The exported graph takes ``patches (batch, S, S, 3)`` **uint8 RGB** — the array a slide reader returns —
and does ``/255``, mean/std normalisation and the NHWC→NCHW transpose itself, so a deployment feeds raw
pixels (4x less host→device traffic than float32) and cannot get the normalisation wrong. Resizing is
**not** folded: the reference preprocessing resizes with an antialiased filter (PIL/cv2 bicubic), which ONNX
``Resize`` does not reproduce when downscaling (e.g. 512→224), so patches must already be ``S x S`` with the
encoder's ``interpolation`` (stamped in the metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.errors import ExportError
from sammil_deploy.export.spec import DEFAULT_OPSET, ExportSpec, TensorSpec

if TYPE_CHECKING:
    from sammil_deploy.features.encoders import PatchEncoder

INPUTS = ("patches",)
OUTPUTS = ("features",)


def resnet_spec(encoder: PatchEncoder, opset: int = DEFAULT_OPSET) -> ExportSpec:
    """I/O contract of the patch encoder with folded normalisation."""
    size_px = encoder.input_size_px
    meta: dict[str, Any] = encoder.meta.to_dict()
    return ExportSpec(
        part="resnet50",
        inputs=(TensorSpec("patches", "uint8", ("batch", size_px, size_px, 3), "RGB patches, NHWC"),),
        outputs=(TensorSpec("features", "float32", ("batch", encoder.dim), "patch features"),),
        preprocessing={
            "input": f"RGB uint8 patches already resized to {size_px}x{size_px} px",
            "resize_interpolation": encoder.interpolation,
            "normalisation": "folded into the graph: (x / 255 - mean) / std",
            "mean_0_1": list(encoder.mean),
            "std_0_1": list(encoder.std),
            "layout": "NHWC uint8",
        },
        config={"encoder": meta["name"], "dim": encoder.dim, "input_size_px": size_px},
        source_sha256=encoder.weights_sha256,
        opset=opset,
    )


def random_patches(size_px: int, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Uniform random uint8 patches ``{"patches": (batch, S, S, 3)}``."""
    return {"patches": rng.integers(0, 256, size=(batch, size_px, size_px, 3), dtype=np.uint8)}


def slide_patches(
    slide_path: Path,
    *,
    patch_size_level0_px: int,
    out_size_px: int,
    count: int,
    rng: np.random.Generator,
    interpolation: str = "bicubic",
) -> dict[str, np.ndarray]:
    """Up to ``count`` tissue-rich patches from a real slide, resized as the encoder expects (parity, calibration).

    Up to ``4 * count`` random positions of the level-0 grid are read, ranked by their share of saturated
    (non-background) pixels, and the best ``count`` are resized to ``out_size_px`` with PIL ``interpolation``.

    Returns:
        ``{"patches": (n, out_size_px, out_size_px, 3) uint8}`` with ``1 <= n <= count``.

    Raises:
        ExportError: If the slide is smaller than one patch.
    """
    from PIL import Image

    from sammil_deploy.slide import open_slide

    with open_slide(slide_path) as reader:
        width, height = reader.info.dimensions_wh
        xs = np.arange(0, width - patch_size_level0_px + 1, patch_size_level0_px)
        ys = np.arange(0, height - patch_size_level0_px + 1, patch_size_level0_px)
        if not len(xs) or not len(ys):
            raise ExportError(
                f"{Path(slide_path).name}: {width}x{height} px is smaller than one {patch_size_level0_px} px patch; "
                "pass a larger slide for parity/calibration"
            )
        grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        picks = grid[rng.permutation(len(grid))[: 4 * count]]
        scored = []
        for x, y in picks:
            rgb = reader.read_region((int(x), int(y)), 0, (patch_size_level0_px, patch_size_level0_px))
            saturation = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
            scored.append((float((saturation > 20).mean()), rgb))
    scored.sort(key=lambda item: -item[0])
    resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    patches = [
        np.asarray(Image.fromarray(rgb).resize((out_size_px, out_size_px), resample)) for _, rgb in scored[:count]
    ]
    return {"patches": np.stack(patches).astype(np.uint8)}
