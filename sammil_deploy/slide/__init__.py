"""Slide access: the reader interface, OpenSlide reader, and synthetic slides for tests and the demo."""

from __future__ import annotations

from pathlib import Path

from sammil_deploy.errors import ConfigError, SlideError
from sammil_deploy.slide.base import SlideInfo, SlideReader, downsample_for_long_side

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")

__all__ = [
    "READERS",
    "SLIDE_SUFFIXES",
    "SlideInfo",
    "SlideReader",
    "downsample_for_long_side",
    "find_slides",
    "open_slide",
]


READERS = ("auto", "openslide", "tiled")


def open_slide(path: Path | str, *, reader: str = "auto", mpp: float | None = None) -> SlideReader:
    """Open a slide; ``mpp`` overrides the metadata.

    Readers: ``openslide`` (every format); ``tiled`` (tile-aligned JPEG decoding for Aperio/generic tiled
    TIFF levels, pixel-identical to OpenSlide, OpenSlide for the rest); ``auto`` = ``tiled`` where it covers
    at least one level, else ``openslide``. ``reader.name`` says which one was opened.

    Raises:
        SlideError: If the file does not exist.
        UnsupportedSlideError: If no reader understands it.
        ConfigError: Unknown reader name.
    """
    path = Path(path)
    if reader not in READERS:
        raise ConfigError(f"{path.name}: no reader {reader!r}; choose from {list(READERS)}")
    if mpp is not None and mpp <= 0:
        raise SlideError(f"{path.name}: --mpp must be > 0, got {mpp}")
    from sammil_deploy.slide.openslide_reader import OpenSlideReader

    if reader == "openslide":
        return OpenSlideReader(path, mpp_override=mpp)
    from sammil_deploy.slide.tiled_reader import TiledJpegReader

    tiled = TiledJpegReader(path, mpp_override=mpp)
    if reader == "auto" and not tiled.fast_level_indices:
        tiled.close()
        return OpenSlideReader(path, mpp_override=mpp)
    return tiled


def find_slides(path: Path) -> list[Path]:
    """One slide file, or every slide file (by suffix) directly inside a folder, sorted.

    Raises:
        SlideError: If ``path`` does not exist or a folder holds no slide.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SlideError(f"{path}: no such file or folder")
    slides = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
    if not slides:
        raise SlideError(f"{path}: folder holds no slide file ({', '.join(SLIDE_SUFFIXES)})")
    return slides
