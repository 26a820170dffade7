"""The one patch-encoding engine of ``extract``, ``infer`` and the benchmarks.

Slide file → reader worker processes (one slide handle each, :class:`PatchDataset`) → uint8 NHWC patches resized
in the workers → batches (pinned on CUDA) → a :class:`~sammil_deploy.runtime.Backend` that takes
``patches (B, S, S, 3) uint8`` and does the normalisation itself (``features.encoders.NormalizedEncoder`` in PyTorch,
the exported ONNX file, the TensorRT plan) → ``(N, D)`` float32 features in grid order.

Read order follows the slide's tiles, not the grid: patches are read row by row (the tile reader then decodes
each JPEG tile once and keeps a patch row of them), each worker gets one contiguous run of that order (no tile
decoded by two workers but at run boundaries), and rows are scattered back to grid order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Sampler

if TYPE_CHECKING:
    import torch

    from sammil_deploy.runtime import Backend

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
RESIZE_PLACES = ("auto", "host", "device")


def resize_place(resize: str, device: str) -> str:
    """Where patches are resized: ``host`` (PIL in the reader workers) or ``device`` (the batch, in torch).

    ``auto`` = on the device for CUDA backends (frees the reader cores of their most expensive per-patch step),
    in the workers otherwise (cheapest on a CPU).
    """
    if resize not in RESIZE_PLACES:
        from sammil_deploy.errors import ConfigError

        raise ConfigError(f"resize must be one of {RESIZE_PLACES}, got {resize!r}")
    if resize == "auto":
        return "device" if device.startswith("cuda") else "host"
    return resize


def resize_method(interpolation: str, place: str) -> str:
    """Provenance label: ``pil-antialiased-bicubic-host`` or ``torch-antialiased-bicubic-device``."""
    return f"{'pil' if place == 'host' else 'torch'}-antialiased-{interpolation}-{place}"


def resize_batch(patches: torch.Tensor, size_px: int, interpolation: str) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 → ``(B, S, S, 3)`` uint8 with antialiased bicubic/bilinear on the batch's device.

    ``torch.nn.functional.interpolate(antialias=True)`` follows PIL's antialiased filters (support scaled by
    the downscale factor); values differ from PIL's fixed-point arithmetic by rounding only (features: cosine
    >= 0.9999, tested).
    """
    import torch

    if patches.shape[1:3] == (size_px, size_px):
        return patches
    x = patches.permute(0, 3, 1, 2).to(torch.float32)
    x = torch.nn.functional.interpolate(x, size=(size_px, size_px), mode=interpolation, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def tile_read_order(coords_level0_xy: np.ndarray) -> np.ndarray:
    """Row-major (y, then x) permutation of the patch rows: neighbouring reads share tiles."""
    coords = np.asarray(coords_level0_xy)
    return np.lexsort((coords[:, 0], coords[:, 1])) if len(coords) else np.zeros(0, np.int64)


class WorkerRunBatches(Sampler[list[int]]):
    """Batches of ``order`` such that DataLoader worker ``w`` reads the ``w``-th contiguous run of ``order``.

    The DataLoader hands batch ``k`` to worker ``k % W``; with no workers the batches simply follow ``order``.

    Args:
        order: Row indices in read order.
        batch_size: Rows per batch.
        num_workers: DataLoader workers W.
    """

    def __init__(self, order: np.ndarray, batch_size: int, num_workers: int) -> None:
        workers = max(1, num_workers)
        runs = np.array_split(np.asarray(order, np.int64), workers)
        per_run = [[run[i : i + batch_size].tolist() for i in range(0, len(run), batch_size)] for run in runs]
        self._batches: list[list[int]] = []
        # Round-robin over the runs is what the DataLoader does over its workers; once a run is exhausted its
        # worker would get the next run's batches, which is harmless (only a few batches at the end).
        for k in range(max((len(b) for b in per_run), default=0)):
            self._batches.extend(b[k] for b in per_run if k < len(b))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def encode_patches(
    slide_path: Path | str,
    coords_level0_xy: np.ndarray,
    backend: Backend,
    *,
    patch_level: int,
    read_size_px: int,
    input_size_px: int,
    interpolation: str,
    batch_size: int,
    num_workers: int,
    prefetch_batches: int = 2,
    reader: str = "auto",
    resize: str = "auto",
    mpp: float | None = None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Encode every patch with a feature backend taking ``patches (B, S, S, 3) uint8`` RGB.

    Args:
        slide_path: Slide file (opened once per reader process).
        coords_level0_xy: (N, 2) int patch top-left corners in level-0 px (grid order).
        backend: Loaded feature backend (input ``patches``, output ``features``).
        patch_level: Level the patches are read at.
        read_size_px: Patch side read at ``patch_level``.
        input_size_px: Encoder input side S; patches are resized to it in the workers.
        interpolation: ``bicubic`` or ``bilinear`` (antialiased, as PIL).
        batch_size: Patches per backend call.
        num_workers: Reader processes (0: read in this process, no overlap).
        prefetch_batches: Batches each worker keeps ready (bounds the queue and its memory).
        reader: Slide reader (``auto``, ``openslide``, ``tiled``; see :func:`sammil_deploy.slide.open_slide`).
        resize: Where to resize (:func:`resize_place`): ``host`` (PIL in the workers), ``device`` (the batch,
            with :func:`resize_batch`) or ``auto``.
        mpp: Optional mpp override for slides without metadata.
        progress: Called as ``progress(done, total)`` after each batch.

    Returns:
        (N, D) float32 features in the order of ``coords_level0_xy``.

    Raises:
        SlideError: If a patch cannot be read.
        InputSpecError, BackendError: If the backend refuses the batch.
    """
    from torch.utils.data import DataLoader

    from sammil_deploy.features.preprocess_ops import PatchTransform
    from sammil_deploy.patching.dataset import PatchDataset

    coords = np.asarray(coords_level0_xy)
    dim = int(backend.output_spec[0].shape[-1])
    out = np.empty((len(coords), dim), np.float32)
    if len(coords) == 0:
        return out
    on_cuda = backend.device.startswith("cuda")
    on_device = resize_place(resize, backend.device) == "device"
    worker_size_px = read_size_px if on_device else input_size_px  # PatchTransform leaves S x S patches alone
    dataset = PatchDataset(
        slide_path, coords, None, patch_level, PatchTransform(worker_size_px, interpolation, channels_last=True),
        read_size_px=read_size_px, mpp=mpp, reader=reader,
    )  # fmt: skip
    resize_fn = (lambda batch: resize_batch(batch, input_size_px, interpolation)) if on_device else (lambda b: b)
    workers = max(0, int(num_workers))
    loader = DataLoader(
        dataset,
        batch_sampler=WorkerRunBatches(tile_read_order(coords), batch_size, workers),
        num_workers=workers,
        pin_memory=on_cuda,
        prefetch_factor=max(1, prefetch_batches) if workers else None,
    )
    try:
        run = _run_cuda if on_cuda else _run_host
        run(loader, backend, out, progress, resize_fn)
    finally:
        dataset.close()
    return out


def _run_host(loader: Any, backend: Backend, out: np.ndarray, progress: ProgressFn | None, resize: Any) -> None:
    """Batches straight into ``backend.infer`` (CPU backends)."""
    done = 0
    for patches, rows in loader:
        out[rows.numpy()] = backend.infer({"patches": resize(patches)})["features"]
        done += len(rows)
        if progress is not None:
            progress(done, len(out))


def _run_cuda(loader: Any, backend: Backend, out: np.ndarray, progress: ProgressFn | None, resize: Any) -> None:
    """Double-buffered GPU loop: copies overlap compute, and the host waits for a batch one batch later.

    Batch k+1's pinned host→device copy (side stream) and batch k-1's device→host feature copy overlap batch
    k's compute.
    """
    import torch

    device = torch.device(backend.device)
    copy_stream = torch.cuda.Stream(device)
    compute = torch.cuda.current_stream(device)
    pending: tuple[torch.Tensor, torch.Tensor, torch.cuda.Event] | None = None
    done = 0

    def drain() -> None:
        nonlocal done, pending
        if pending is None:
            return
        host, rows, ready = pending
        ready.synchronize()
        out[rows.numpy()] = host.numpy()
        done += len(rows)
        pending = None
        if progress is not None:
            progress(done, len(out))

    for patches, rows in loader:  # pinned by the DataLoader's pin-memory thread
        with torch.cuda.stream(copy_stream):
            on_device = patches.to(device, non_blocking=True)
        compute.wait_stream(copy_stream)  # queued behind the copy on the GPU; the host does not wait
        on_device.record_stream(compute)  # the caching allocator must not reuse it before compute is done
        on_device = resize(on_device)
        if backend.kind != "torch":  # TensorRT / ONNX Runtime run on their own streams: inputs must be ready
            compute.synchronize()
        features = backend.infer_torch({"patches": on_device})["features"]
        host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
        host.copy_(features, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(compute)
        drain()
        pending = (host, rows, ready)
    drain()
