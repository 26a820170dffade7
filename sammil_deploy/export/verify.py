"""Parity between a PyTorch reference and an exported artifact: a report with a verdict, never a print.

Per output we measure the max absolute error, the max error relative to the reference's range
(``max |cand - ref| / max |ref|``), the cosine similarity of the flattened tensors and the index of the
worst element, over one or more input sets (e.g. two batch sizes, to exercise the dynamic axes). For mask
logits we also threshold at 0 and measure the IoU of each predicted mask (the quantity SAM's automatic mask
generator actually consumes). Thresholds depend on the precision (:data:`TOLERANCES`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy._deps import require
from sammil_deploy.errors import ConfigError, ExportError, ParityError

if TYPE_CHECKING:
    from torch import nn

Arrays = Mapping[str, np.ndarray]
Runner = Callable[[Arrays], Arrays]


@dataclass(frozen=True, slots=True)
class Tolerance:
    """Pass thresholds for one output: ``max_abs <= atol + rtol * max|ref|`` and ``cosine >= cosine_min``.

    ``mask_iou_min`` applies to outputs listed as mask logits (mean IoU of the masks thresholded at 0).
    """

    atol: float
    rtol: float
    cosine_min: float
    mask_iou_min: float = 0.0

    def __post_init__(self) -> None:
        if self.atol < 0 or self.rtol < 0 or not -1.0 <= self.cosine_min <= 1.0:
            raise ConfigError(f"invalid parity tolerance {self}: atol/rtol >= 0 and cosine_min in [-1, 1]")


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, cosine_min=0.99999, mask_iou_min=0.98),
    "fp16": Tolerance(atol=1e-3, rtol=2e-2, cosine_min=0.999, mask_iou_min=0.90),
    # INT8 is judged on in-distribution inputs (real tissue patches): per-element errors are coarse by design.
    "int8": Tolerance(atol=1e-2, rtol=0.25, cosine_min=0.99, mask_iou_min=0.80),
}


@dataclass(frozen=True, slots=True)
class OutputParity:
    """Parity of one output over all input sets (worst case).

    Attributes:
        name: Output name.
        shape: Shape in the input set that produced the worst absolute error.
        max_abs: Largest ``|cand - ref|``.
        max_rel: ``max_abs / max |ref|`` (scale-free; 0 when the reference is all zeros and so is the error).
        cosine: Smallest cosine similarity over the input sets.
        worst_index: Index of the largest absolute error (in ``shape``), with its input-set number first.
        mask_iou: Mean IoU of masks thresholded at 0 (``None`` unless the output holds mask logits).
        passed: Whether every threshold held.
    """

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    worst_index: tuple[int, ...]
    mask_iou: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cosine": self.cosine,
            "worst_index": list(self.worst_index),
            "mask_iou": self.mask_iou,
            "passed": self.passed,
        }


@dataclass(frozen=True, slots=True)
class ParityReport:
    """Verdict on one artifact.

    Attributes:
        artifact: What was checked (file name or label).
        precision: Precision the tolerance belongs to.
        tolerance: Thresholds used.
        outputs: One entry per compared output.
        n_input_sets: How many input sets were run.
        notes: Extra context (input source, e.g. ``"random"`` or ``"slide CMU-1-Small-Region.svs"``).
    """

    artifact: str
    precision: str
    tolerance: Tolerance
    outputs: tuple[OutputParity, ...]
    n_input_sets: int
    notes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """All outputs within tolerance."""
        return all(o.passed for o in self.outputs)

    def summary(self) -> str:
        """One line per output: verdict, max abs/rel error, cosine, worst index (and mask IoU)."""
        lines = [f"{self.artifact} [{self.precision}] parity {'passed' if self.passed else 'FAILED'}:"]
        for o in self.outputs:
            iou = f" mask_iou={o.mask_iou:.4f}" if o.mask_iou is not None else ""
            lines.append(
                f"  {o.name}: {'ok' if o.passed else 'FAIL'} max_abs={o.max_abs:.3g} max_rel={o.max_rel:.3g} "
                f"cosine={o.cosine:.6f} worst={o.worst_index}{iou}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "artifact": self.artifact,
            "precision": self.precision,
            "passed": self.passed,
            "tolerance": {
                "atol": self.tolerance.atol,
                "rtol": self.tolerance.rtol,
                "cosine_min": self.tolerance.cosine_min,
                "mask_iou_min": self.tolerance.mask_iou_min,
            },
            "n_input_sets": self.n_input_sets,
            "outputs": [o.to_dict() for o in self.outputs],
            "notes": dict(self.notes),
        }

    def raise_if_failed(self) -> None:
        """Raise :class:`ParityError` with :meth:`summary` when any output is out of tolerance."""
        if not self.passed:
            raise ParityError(self.summary())


def torch_runner(module: nn.Module, input_names: Sequence[str], output_names: Sequence[str]) -> Runner:
    """Wrap a module as ``{input name: array} -> {output name: array}`` (CPU, eval, no grad)."""
    import torch

    module = module.eval()

    def run(inputs: Arrays) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            result = module(*(torch.from_numpy(np.asarray(inputs[n])) for n in input_names))
        result = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        return {n: r.detach().float().cpu().numpy() for n, r in zip(output_names, result, strict=True)}

    return run


def onnx_runner(path: Path, *, providers: Sequence[Any] | None = None, threads: int = 0) -> Runner:
    """Open ``path`` in an onnxruntime session (CPU unless ``providers`` say otherwise) as a runner.

    Raises:
        MissingDependencyError: onnxruntime is not installed.
        ExportError: The session cannot be created (names the file and the reason).
    """
    ort = require("onnxruntime", extra="ort")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
    except (RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail) as err:
        raise ExportError(f"{path}: onnxruntime cannot load the exported model ({err})") from None
    names = [o.name for o in session.get_outputs()]

    def run(inputs: Arrays) -> dict[str, np.ndarray]:
        feeds = {i.name: np.asarray(inputs[i.name]) for i in session.get_inputs()}
        return dict(zip(names, session.run(names, feeds), strict=True))

    return run


def mask_iou(reference_logits: np.ndarray, candidate_logits: np.ndarray, *, threshold: float = 0.0) -> np.ndarray:
    """IoU of binary masks ``logits > threshold`` per mask over the last two axes.

    Args:
        reference_logits: ``(..., H, W)`` mask logits.
        candidate_logits: Same shape.
        threshold: Logit threshold (SAM's ``mask_threshold`` is 0).

    Returns:
        ``(...)`` float64 IoU; 1.0 where both masks are empty.
    """
    ref = reference_logits > threshold
    cand = candidate_logits > threshold
    inter = np.logical_and(ref, cand).sum(axis=(-2, -1))
    union = np.logical_or(ref, cand).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def compare_outputs(
    reference: Sequence[Arrays], candidate: Sequence[Arrays], tol: Tolerance, *, mask_outputs: Sequence[str] = ()
) -> tuple[OutputParity, ...]:
    """Aggregate per-output errors over input sets (worst case) and apply ``tol``.

    Raises:
        ExportError: If the candidate lacks an output or returns another shape.
    """
    result = []
    for name in reference[0]:
        worst_abs, worst_rel, worst_cos, worst_idx, worst_shape = 0.0, 0.0, 1.0, (0,), ()
        ious: list[np.ndarray] = []
        passed = True
        for k, (ref_set, cand_set) in enumerate(zip(reference, candidate, strict=True)):
            if name not in cand_set:
                raise ExportError(f"exported model has no output {name!r}; it has {sorted(cand_set)}")
            ref = np.asarray(ref_set[name], dtype=np.float64)
            cand = np.asarray(cand_set[name], dtype=np.float64)
            if ref.shape != cand.shape:
                raise ExportError(f"output {name!r}: exported shape {cand.shape} != reference shape {ref.shape}")
            diff = np.abs(cand - ref)
            max_abs = float(diff.max(initial=0.0))
            scale = float(np.abs(ref).max(initial=0.0))
            max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
            norms = float(np.linalg.norm(ref) * np.linalg.norm(cand))
            cosine = float(np.dot(ref.ravel(), cand.ravel()) / norms) if norms > 0 else float(max_abs == 0)
            passed &= max_abs <= tol.atol + tol.rtol * scale and cosine >= tol.cosine_min
            if name in mask_outputs:
                ious.append(mask_iou(ref, cand).ravel())
            if max_abs >= worst_abs:
                worst_abs, worst_shape = max_abs, ref.shape
                flat = int(diff.argmax()) if diff.size else 0
                worst_idx = (k, *(int(i) for i in np.unravel_index(flat, diff.shape))) if diff.size else (k,)
            worst_rel, worst_cos = max(worst_rel, max_rel), min(worst_cos, cosine)
        iou = float(np.concatenate(ious).mean()) if ious else None
        if iou is not None:
            passed &= iou >= tol.mask_iou_min
        result.append(OutputParity(name, tuple(worst_shape), worst_abs, worst_rel, worst_cos, worst_idx, iou, passed))
    return tuple(result)


def verify_parity(
    reference: Runner,
    candidate: Runner | Path,
    inputs: Arrays | Sequence[Arrays],
    tol: Tolerance | str,
    *,
    artifact: str = "",
    mask_outputs: Sequence[str] = (),
    notes: Mapping[str, Any] | None = None,
) -> ParityReport:
    """Run reference and candidate on the same inputs and compare every reference output.

    Args:
        reference: ``{input: array} -> {output: array}`` (see :func:`torch_runner`).
        candidate: A runner, or an ONNX path opened with onnxruntime on the CPU.
        inputs: One input set or several (e.g. two batch sizes for the dynamic axes).
        tol: A :class:`Tolerance` or a precision name from :data:`TOLERANCES`.
        artifact: Label used in the report.
        mask_outputs: Outputs holding mask logits (IoU at threshold 0 is added to their check).
        notes: Extra context stored in the report.

    Returns:
        The report; call :meth:`ParityReport.raise_if_failed` to turn a failure into :class:`ParityError`.
    """
    precision = tol if isinstance(tol, str) else "custom"
    if isinstance(tol, str):
        if tol not in TOLERANCES:
            raise ConfigError(f"unknown precision {tol!r} for parity; choose from {sorted(TOLERANCES)}")
        tol = TOLERANCES[tol]
    sets = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not sets:
        raise ConfigError("verify_parity needs at least one input set")
    if isinstance(candidate, (str, Path)):
        artifact = artifact or Path(candidate).name
        candidate = onnx_runner(Path(candidate))
    ref_out = [reference(s) for s in sets]
    cand_out = [candidate(s) for s in sets]
    outputs = compare_outputs(ref_out, cand_out, tol, mask_outputs=mask_outputs)
    return ParityReport(artifact or "candidate", precision, tol, outputs, len(sets), dict(notes or {}))
