"""SlideReader over OpenSlide (Aperio .svs, .tif/.tiff, .ndpi, .mrxs, .scn, .vms, .bif, ...)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from sammil_deploy.errors import SlideError, UnsupportedSlideError
from sammil_deploy.slide.base import SlideInfo, SlideReader

log = logging.getLogger(__name__)


class OpenSlideReader(SlideReader):
    """Reader backed by openslide-python (+ openslide-bin, so no system library is needed)."""

    name = "openslide"

    def __init__(self, path: Path, *, mpp_override: float | None = None) -> None:
        import openslide

        self._path = Path(path)
        if not self._path.is_file():
            raise SlideError(f"{self._path}: no such slide file; check the path")
        try:
            self._slide = openslide.OpenSlide(str(self._path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise UnsupportedSlideError(
                f"{self._path.name}: not a slide format OpenSlide can read (or the file is corrupt); supported: "
                ".svs .tif .tiff .ndpi .vms .vmu .scn .mrxs .svslide .bif .dcm"
            ) from None
        except openslide.OpenSlideError as err:
            raise UnsupportedSlideError(
                f"{self._path.name}: OpenSlide cannot open it ({err}); is it corrupt?"
            ) from None
        self._info = self._read_info(mpp_override)
        self._closed = False

    def _read_info(self, mpp_override: float | None) -> SlideInfo:
        props = self._slide.properties
        mpp_x, mpp_y = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
        if mpp_override is not None:
            mpp, source = float(mpp_override), "user"
        elif mpp_x and mpp_y:
            mpp, source = (mpp_x + mpp_y) / 2, "metadata"
        else:
            mpp, source = None, "missing"
            log.warning(
                "%s: no microns-per-pixel metadata; mpp-based options will ask for --mpp, patches use level-0 px",
                self._path.name,
            )
        return SlideInfo(
            path=self._path,
            level_dimensions_wh=tuple((int(w), int(h)) for w, h in self._slide.level_dimensions),
            level_downsamples=tuple(float(d) for d in self._slide.level_downsamples),
            mpp=mpp,
            objective_power=_float(props.get("openslide.objective-power")),
            vendor=props.get("openslide.vendor", "unknown"),
            mpp_source=source,
        )

    @property
    def info(self) -> SlideInfo:
        """Geometry and metadata."""
        return self._info

    def read_region(self, xy_level0: tuple[int, int], level: int, size_px: tuple[int, int]) -> np.ndarray:
        """Return an (H, W, 3) uint8 RGB array; transparent/out-of-slide pixels become white."""
        import openslide

        if self._closed:
            raise SlideError(f"{self._path.name}: reader is closed")
        if not 0 <= level < self._info.level_count:
            raise SlideError(f"{self._path.name}: level {level} out of range 0..{self._info.level_count - 1}")
        try:
            rgba = np.asarray(self._slide.read_region((int(xy_level0[0]), int(xy_level0[1])), level, size_px))
        except openslide.OpenSlideError as err:
            raise SlideError(f"{self._path.name}: cannot read region at {xy_level0} level {level} ({err})") from None
        return _rgba_on_white(rgba)

    def close(self) -> None:
        """Release the OpenSlide handle."""
        if not self._closed:
            self._slide.close()
            self._closed = True


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite premultiplied-alpha RGBA (OpenSlide's output) over white."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16) + (255 - alpha.astype(np.uint16))
    return np.minimum(rgb, 255).astype(np.uint8)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None
