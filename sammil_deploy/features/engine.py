"""The one patch-encoding engine of ``extract``, ``infer`` and the benchmarks.

Slide file → reader processes (:class:`~sammil_deploy.patching.reader_pool.ReaderPool`, started once per run and
kept for every slide) → whole uint8 NHWC batches resized in the workers, in shared memory → (pinned on CUDA) → a
:class:`~sammil_deploy.runtime.Backend` that takes
``patches (B, S, S, 3) uint8`` and does the normalisation itself (``features.encoders.NormalizedEncoder`` in PyTorch,
the exported ONNX file, the TensorRT plan) → ``(N, D)`` float32 features in grid order.

Read order follows the slide's tiles, not the grid: patches are read row by row within vertical strips (the
tile reader then decodes each JPEG tile about once and keeps a strip's tile rows cached), each worker gets one
contiguous run of that order (no tile decoded by two workers but at run boundaries), and rows are scattered back
to grid order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from sammil_deploy.patching.reader_pool import ReaderPool
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


READ_STRIP_PATCHES = 32  # strip width: its tile rows (~2 x 33 tiles of 512 px, ~50 MB) fit the tile cache


def tile_read_order(coords_level0_xy: np.ndarray, strip_patches: int = READ_STRIP_PATCHES) -> np.ndarray:
    """Permutation of the patch rows in read order: vertical strips ``strip_patches`` patches wide, each row by row.

    Neighbouring reads share tiles, and a strip's tile rows fit the reader's tile cache whatever the slide's width,
    so each tile is decoded about once (plain row-major order re-decodes a tile row when a row of patches spans
    more tiles than the cache holds). The patch step is taken from the coordinates.
    """
    coords = np.asarray(coords_level0_xy, np.int64)
    if not len(coords):
        return np.zeros(0, np.int64)
    xs = np.unique(coords[:, 0])
    step = int(np.diff(xs).min()) if len(xs) > 1 else 1
    strip = (coords[:, 0] - xs[0]) // (step * max(1, strip_patches))
    return np.lexsort((coords[:, 0], coords[:, 1], strip))


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
    pool: ReaderPool | None = None,
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
        num_workers: Reader processes started for this call when no ``pool`` is given (0: read in this
            process, no overlap).
        prefetch_batches: Batches each worker keeps ready (bounds the shared memory), for a pool started here.
        reader: Slide reader (``auto``, ``openslide``, ``tiled``; see :func:`sammil_deploy.slide.open_slide`).
        resize: Where to resize (:func:`resize_place`): ``host`` (PIL in the workers), ``device`` (the batch,
            with :func:`resize_batch`) or ``auto``.
        mpp: Optional mpp override for slides without metadata.
        progress: Called as ``progress(done, total)`` after each batch.
        pool: Reader processes kept for many slides (:class:`~sammil_deploy.patching.reader_pool.ReaderPool`);
            wins over ``num_workers``.

    Returns:
        (N, D) float32 features in the order of ``coords_level0_xy``.

    Raises:
        SlideError: If a patch cannot be read.
        InputSpecError, BackendError: If the backend refuses the batch.
    """
    from sammil_deploy.patching.reader_pool import ReaderPool, ReadJob, read_batches_inline

    coords = np.asarray(coords_level0_xy, np.int64)
    dim = int(backend.output_spec[0].shape[-1])
    out = np.empty((len(coords), dim), np.float32)
    if len(coords) == 0:
        return out
    on_device = resize_place(resize, backend.device) == "device"
    job = ReadJob(
        str(slide_path), reader, mpp, int(patch_level), int(read_size_px),
        int(read_size_px if on_device else input_size_px), interpolation,
    )  # fmt: skip
    resize_fn = (lambda batch: resize_batch(batch, input_size_px, interpolation)) if on_device else None
    order = tile_read_order(coords)
    with contextlib.ExitStack() as stack:
        if pool is None and num_workers > 0:
            pool = stack.enter_context(ReaderPool(int(num_workers), prefetch_batches=prefetch_batches))
        if pool is None:
            batches = read_batches_inline(job, coords, order, batch_size)
        else:
            batches = pool.batches(job, coords, order, batch_size)
        stack.callback(batches.close)  # stops the workers' reads if encoding fails
        run = _run_cuda if backend.device.startswith("cuda") else _run_host
        run(batches, backend, out, progress, resize_fn)
    return out


Batches = Iterable[tuple[np.ndarray, np.ndarray]]


def _run_host(batches: Batches, backend: Backend, out: np.ndarray, progress: ProgressFn | None, resize: Any) -> None:
    """Batches (views of the readers' shared memory) straight into ``backend.infer`` (CPU backends)."""
    import torch

    done = 0
    for patches, rows in batches:
        x = patches if resize is None else resize(torch.from_numpy(patches))
        out[rows] = backend.infer({"patches": x})["features"]
        done += len(rows)
        if progress is not None:
            progress(done, len(out))


def _run_cuda(batches: Batches, backend: Backend, out: np.ndarray, progress: ProgressFn | None, resize: Any) -> None:
    """Double-buffered GPU loop: copies overlap compute, and the host waits for a batch one batch later.

    Each batch is copied once from the readers' shared memory into pinned memory (torch's caching host allocator
    reuses a pinned block only after the copies queued from it are done), so its slot goes back to the reader at
    once. Batch k+1's pinned host→device copy (side stream) and batch k-1's device→host feature copy overlap
    batch k's compute.
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
        out[rows] = host.numpy()
        done += len(rows)
        pending = None
        if progress is not None:
            progress(done, len(out))

    for patches, rows in batches:
        pinned = torch.empty(patches.shape, dtype=torch.uint8, pin_memory=True)
        pinned.numpy()[...] = patches
        with torch.cuda.stream(copy_stream):
            on_device = pinned.to(device, non_blocking=True)
        compute.wait_stream(copy_stream)  # queued behind the copy on the GPU; the host does not wait
        on_device.record_stream(compute)  # the caching allocator must not reuse it before compute is done
        on_device = on_device if resize is None else resize(on_device)
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
