"""INT8 ResNet50 with explicit quantisation (Q/DQ nodes), calibrated on patches from the user's slides.

TensorRT 11 dropped implicit INT8 calibration; INT8 now comes from ``QuantizeLinear/DequantizeLinear`` pairs
in the graph. We let onnxruntime's static quantiser insert them (``QuantFormat.QDQ``) with the settings
TensorRT requires: symmetric INT8 activations and weights (zero point 0), per-channel weights, only
``Conv``/``Gemm``/``MatMul`` quantised (the folded uint8→float normalisation at the input stays float).
Calibration uses percentile clipping over real tissue patches. The result must pass the INT8 parity gate
(:data:`.verify.TOLERANCES` ``int8``) against the FP32 PyTorch encoder on *other* patches, or it is rejected.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sammil_deploy._deps import require
from sammil_deploy.errors import ConfigError, ExportError
from sammil_deploy.export.spec import ExportArtifact, check_model, make_artifact, stamp_metadata
from sammil_deploy.io_atomic import save_onnx

log = logging.getLogger(__name__)


def quantize_resnet_int8(
    fp32: ExportArtifact, out: Path, calibration_patches: np.ndarray, *, batch_size: int = 16
) -> ExportArtifact:
    """Write a Q/DQ INT8 copy of the FP32 ResNet50 ONNX, calibrated on ``calibration_patches``.

    Args:
        fp32: The exported FP32 ResNet50 (input ``patches`` uint8 NHWC).
        out: Destination ``.onnx``.
        calibration_patches: ``(N, S, S, 3)`` uint8 tissue patches, resized as in deployment.
        batch_size: Patches per calibration batch.

    Raises:
        ConfigError: Fewer than one patch, or the wrong shape.
        ExportError: Quantisation fails.
    """
    require("onnxruntime", extra="ort")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    patches = np.asarray(calibration_patches)
    if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8 or not len(patches):
        raise ConfigError(f"INT8 calibration needs (N, S, S, 3) uint8 patches, got {patches.shape} {patches.dtype}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "quantized.onnx"
        quant_pre_process(str(fp32.path), str(prepared), skip_symbolic_shape=True)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints progress
                quantize_static(
                    str(prepared),
                    str(quantized),
                    # equal batches: the calibrator stacks per-batch outputs and rejects a short last batch
                    _PatchReader(patches, math.gcd(len(patches), batch_size)),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                    calibrate_method=CalibrationMethod.Percentile,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": 99.99},
                )
        except (RuntimeError, ValueError) as err:
            raise ExportError(f"{fp32.path.name}: INT8 quantisation failed ({err})") from None
        model = onnx.load(str(quantized))
        stamp_metadata(
            model, {"sammil_deploy.precision": "int8", "sammil_deploy.int8_calibration_patches": str(len(patches))}
        )
        model.doc_string = "sammil-deploy resnet50 (int8 Q/DQ, symmetric, per-channel weights)"
        save_onnx(out, model)
    check_model(out)
    log.info("quantised %s with %d calibration patches", out.name, len(patches))
    return make_artifact(fp32.part, "int8", out, None, time.perf_counter() - start)


class _PatchReader:
    """onnxruntime ``CalibrationDataReader``: yields ``{"patches": (b, S, S, 3) uint8}`` batches once."""

    def __init__(self, patches: np.ndarray, batch_size: int) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [patches[i : i + batch_size] for i in range(0, len(patches), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"patches": batch}
