"""``Sam.postprocess_masks`` for one crop's masks, computed only inside each mask's window.

Upstream upsamples every mask logit map twice (low-res 4h x 4w -> S x S encoder input, cut to the resized crop,
-> crop size) and then thresholds the full maps: for SAM-MIL's 1024 px images that is ~0.8 M pixels per mask
and ~2k masks a slide. A bilinear output pixel is a convex combination of (at most) four source pixels, so it
can exceed a threshold only where one of its source taps does. :class:`CropUpsampler` finds, on the low-res
logits, the rows and columns that can exceed the loosest cut (``mask_threshold - stability_offset``), maps them
through both resizes, and evaluates the two bilinear resizes only in that window. Stability counts, boxes and
the final binary masks come from the window; outside it every pixel is below every cut.

The arithmetic is PyTorch's (``upsample_bilinear2d``, ``align_corners=False``): the same source indices and
weights, computed with the single rounding of the fused multiply-add PyTorch's kernel uses. The blend order
differs slightly from PyTorch's vectorised loop, so a value may differ by a few float32 ulps (measured: at most
6e-6 on logits of magnitude ~10); a pixel flips only if its logit lies that close to 0 or +-1. The benchmark
reports the IoU against the reference generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Source values this close under a cut still count as "may exceed it" (float rounding of the convex blend).
_WINDOW_MARGIN = 1e-3


@dataclass(frozen=True)
class LinearTaps:
    """1-D taps of a bilinear resize (``align_corners=False``) from ``in_len`` to ``out_len`` samples.

    Attributes:
        i0, i1: (out_len,) int64 source indices of each output sample (non-decreasing).
        w0, w1: (out_len,) float32 weights.
    """

    i0: torch.Tensor
    i1: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor

    @staticmethod
    def build(in_len: int, out_len: int, device: torch.device) -> LinearTaps:
        """PyTorch's ``compute_source_index_and_lambda`` for a size-given resize."""
        import torch

        scale = float(np.float32(in_len) / np.float32(out_len))  # float32 ratio, as the kernel's opmath
        dst = torch.arange(out_len, dtype=torch.float64, device=device) + 0.5
        # scale * (dst + 0.5) - 0.5 rounded once (a fused multiply-add); exact in float64 before the cast.
        real = (scale * dst - 0.5).float().clamp(min=0.0)
        i0 = real.floor().to(torch.int64).clamp(max=in_len - 1)
        w1 = (real - i0).clamp(0.0, 1.0)
        i1 = i0 + (i0 < in_len - 1).to(torch.int64)
        return LinearTaps(i0, i1, 1.0 - w1, w1)

    def output_range(self, src_first: torch.Tensor, src_last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output samples [start, stop) whose taps touch source samples [src_first, src_last] (per mask)."""
        import torch

        start = torch.searchsorted(self.i1, src_first.contiguous(), right=False)
        stop = torch.searchsorted(self.i0, src_last.contiguous(), right=True)
        return start, torch.maximum(stop, start)

    def sources(self, start: int, stop: int) -> tuple[int, int]:
        """Source samples [first, last + 1) read by output samples [start, stop)."""
        return int(self.i0[start]), int(self.i1[stop - 1]) + 1


def _resize_window(
    x: torch.Tensor, ty: LinearTaps, tx: LinearTaps, rows: slice, cols: slice, origin: tuple[int, int]
) -> torch.Tensor:
    """Bilinear output rows x cols of a source window ``x`` whose top-left is source sample ``origin`` (y, x).

    Width pass on the source rows, then height pass: per output pixel the kernel's
    ``(x00 * wx0 + x01 * wx1) * wy0 + (x10 * wx0 + x11 * wx1) * wy1``, with each row blend computed once.
    """
    x0, x1 = tx.i0[cols] - origin[1], tx.i1[cols] - origin[1]
    across = x.index_select(1, x0) * tx.w0[cols] + x.index_select(1, x1) * tx.w1[cols]
    y0, y1 = ty.i0[rows] - origin[0], ty.i1[rows] - origin[0]
    return across.index_select(0, y0) * ty.w0[rows, None] + across.index_select(0, y1) * ty.w1[rows, None]


class CropUpsampler:
    """Windowed ``Sam.postprocess_masks`` for the masks of one crop (see the module docstring).

    Args:
        low_res_px: Side of the decoder's low-res logits (4h).
        input_size_px: Encoder input side S.
        resized_hw: (H', W') of the crop after ResizeLongestSide.
        crop_hw: (H, W) of the crop in image px.
        device: Where the taps live (the logits' device).
    """

    def __init__(
        self,
        low_res_px: int,
        input_size_px: int,
        resized_hw: tuple[int, int],
        crop_hw: tuple[int, int],
        device: torch.device,
    ) -> None:
        self.crop_hw = tuple(crop_hw)
        # Stage 1: low-res -> S x S, of which only the first H' rows / W' columns are used.
        self.stage1 = [LinearTaps.build(low_res_px, input_size_px, device) for _ in range(2)]
        self.stage1 = [
            LinearTaps(t.i0[:n], t.i1[:n], t.w0[:n], t.w1[:n]) for t, n in zip(self.stage1, resized_hw, strict=True)
        ]
        # Stage 2: H' x W' -> H x W (identity, skipped, when the sizes agree: a same-size resize is a copy).
        self.identity = tuple(resized_hw) == self.crop_hw
        self.stage2 = None if self.identity else [
            LinearTaps.build(n_in, n_out, device) for n_in, n_out in zip(resized_hw, crop_hw, strict=True)
        ]  # fmt: skip

    def windows(self, low_res: torch.Tensor, cut: float) -> torch.Tensor:
        """(N, 4) int64 [y0, y1, x0, x1) crop-frame windows outside which every logit of (N, 4h, 4w) is <= ``cut``.

        Empty masks get an empty window (y1 == y0 or x1 == x0).
        """
        import torch

        above = low_res > cut - _WINDOW_MARGIN * max(1.0, abs(cut))
        bounds = []
        for axis, taps1 in ((-1, self.stage1[0]), (-2, self.stage1[1])):  # rows, then columns
            profile = above.any(dim=axis)
            first = profile.to(torch.uint8).argmax(dim=-1)
            last = profile.shape[-1] - 1 - profile.flip(-1).to(torch.uint8).argmax(dim=-1)
            start, stop = taps1.output_range(first, last)
            if self.stage2 is not None:
                nonempty = stop > start
                taps2 = self.stage2[0 if axis == -1 else 1]
                start, stop = taps2.output_range(start.clamp(max=len(taps1.i0) - 1), (stop - 1).clamp(min=0))
                stop = torch.where(nonempty, stop, start)
            stop = torch.where(profile.any(dim=-1), stop, start)
            bounds += [start, stop]
        return torch.stack(bounds, dim=1).to(torch.int64)

    def logits(self, low_res: torch.Tensor, window: tuple[int, int, int, int]) -> torch.Tensor:
        """(y1 - y0, x1 - x0) crop-resolution logits of one (4h, 4w) low-res map in window [y0, y1) x [x0, x1)."""
        wy0, wy1, wx0, wx1 = window
        if self.identity:
            return self._stage1(low_res, slice(wy0, wy1), slice(wx0, wx1))
        ty, tx = self.stage2
        ry0, ry1 = ty.sources(wy0, wy1)
        rx0, rx1 = tx.sources(wx0, wx1)
        resized = self._stage1(low_res, slice(ry0, ry1), slice(rx0, rx1))
        return _resize_window(resized, ty, tx, slice(wy0, wy1), slice(wx0, wx1), (ry0, rx0))

    def _stage1(self, low_res: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        ty, tx = self.stage1
        sy0, sy1 = ty.sources(rows.start, rows.stop)
        sx0, sx1 = tx.sources(cols.start, cols.stop)
        return _resize_window(low_res[sy0:sy1, sx0:sx1], ty, tx, rows, cols, (sy0, sx0))

    def stability_and_boxes(
        self, low_res: torch.Tensor, mask_threshold: float, offset: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stability scores and inclusive crop-frame boxes of (N, 4h, 4w) logits.

        The numbers of ``postprocess.stability_and_boxes`` on the full upsampled maps: NaN and [0, 0, 0, 0] for
        masks empty at ``mask_threshold - offset``.
        """
        import torch

        from sammil_deploy.segment.postprocess import stability_and_boxes

        stability = torch.full((len(low_res),), float("nan"), device=low_res.device)
        boxes = torch.zeros((len(low_res), 4), dtype=torch.int64, device=low_res.device)
        windows = self.windows(low_res, mask_threshold - offset).tolist()
        for k, (y0, y1, x0, x1) in enumerate(windows):
            if y1 <= y0 or x1 <= x0:
                continue
            logits = self.logits(low_res[k], (y0, y1, x0, x1))
            s, b = stability_and_boxes(logits[None], mask_threshold, offset)
            stability[k] = s[0]
            if bool(b.any()):
                boxes[k] = b[0] + torch.tensor([x0, y0, x0, y0], device=b.device)
        return stability, boxes

    def binary_in_boxes(self, low_res: torch.Tensor, boxes: np.ndarray, mask_threshold: float) -> list[np.ndarray]:
        """Each mask of (N, 4h, 4w) logits thresholded inside its inclusive crop-frame box: N bool numpy crops."""
        crops = []
        for k, (bx0, by0, bx1, by1) in enumerate(np.asarray(boxes, np.int64).tolist()):
            logits = self.logits(low_res[k], (by0, by1 + 1, bx0, bx1 + 1))
            crops.append(np.ascontiguousarray((logits > mask_threshold).cpu().numpy()))
        return crops
