"""A straightforward CLAM-style feature extraction, written here as the baseline our extraction is timed against.

It follows CLAM's ``extract_features_fp.py`` (``Whole_Slide_Bag_FP`` + ``compute_w_loader``): one OpenSlide
handle opened in the main process and shared by the DataLoader's (forked) workers; each item opens the coords
HDF5, reads its coordinate, reads the region with ``read_region(...).convert("RGB")`` and applies torchvision
``Resize`` → ``ToTensor`` → ``Normalize`` on the CPU; batches of float32 tensors go to the device, the model runs
eagerly under ``inference_mode`` and each batch's features and coords are appended to the output HDF5. CLAM's
loader uses ``num_workers=8, pin_memory=True`` on CUDA and the defaults (no workers) on the CPU.

Same model, same patches: the caller passes the very encoder instance and coordinates our extraction uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from sammil_deploy.features.encoders import PatchEncoder

CLAM_CUDA_WORKERS = 8


def clam_num_workers(device: str) -> int:
    """CLAM's rule: 8 loader workers on CUDA, none (the main process reads) on the CPU."""
    return CLAM_CUDA_WORKERS if str(device).startswith("cuda") else 0


def write_coords_h5(path: Path, coords_level0_xy: np.ndarray, patch_size_px: int, patch_level: int = 0) -> Path:
    """A CLAM coords file: dataset ``coords`` (N, 2) with attrs ``patch_size`` and ``patch_level``."""
    import h5py

    with h5py.File(path, "w") as f:
        dset = f.create_dataset("coords", data=np.asarray(coords_level0_xy, dtype=np.int64))
        dset.attrs["patch_size"] = int(patch_size_px)
        dset.attrs["patch_level"] = int(patch_level)
    return path


def save_hdf5(path: Path, assets: dict[str, np.ndarray], mode: str = "a") -> None:
    """CLAM's ``save_hdf5``: create resizable datasets on the first write, append rows afterwards."""
    import h5py

    with h5py.File(path, mode) as f:
        for key, value in assets.items():
            if key not in f:
                f.create_dataset(
                    key, shape=value.shape, maxshape=(None, *value.shape[1:]), chunks=(1, *value.shape[1:]), data=value
                )
            else:
                dset = f[key]
                dset.resize(len(dset) + len(value), axis=0)
                dset[-len(value) :] = value


def clam_transforms(mean: tuple[float, ...], std: tuple[float, ...], size_px: int, interpolation: str) -> Any:
    """CLAM's ``get_eval_transforms``: ``Resize(size)`` (bilinear in CLAM), ``ToTensor``, ``Normalize``."""
    from torchvision import transforms

    modes = {"bilinear": transforms.InterpolationMode.BILINEAR, "bicubic": transforms.InterpolationMode.BICUBIC}
    mode = modes[interpolation]
    return transforms.Compose(
        [transforms.Resize(size_px, interpolation=mode), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )


class ClamStyleBag:
    """CLAM's ``Whole_Slide_Bag_FP``: a map-style dataset over a coords HDF5 and a shared OpenSlide handle."""

    def __init__(self, coords_h5: Path, wsi: Any, transform: Any) -> None:
        import h5py

        self.coords_h5 = Path(coords_h5)
        self.wsi = wsi
        self.transform = transform
        with h5py.File(self.coords_h5, "r") as f:
            self.patch_level = int(f["coords"].attrs["patch_level"])
            self.patch_size = int(f["coords"].attrs["patch_size"])
            self.length = len(f["coords"])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict[str, Any]:
        import h5py

        with h5py.File(self.coords_h5, "r") as f:  # CLAM reopens the file for every item
            coord = f["coords"][idx]
        img = self.wsi.read_region(tuple(int(c) for c in coord), self.patch_level, (self.patch_size,) * 2)
        return {"img": self.transform(img.convert("RGB")), "coord": coord}


def clam_style_extract(
    slide: Path,
    coords_h5: Path,
    encoder: PatchEncoder,
    out_h5: Path,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    interpolation: str = "bilinear",
) -> int:
    """Extract features of every patch in ``coords_h5`` the CLAM way; returns the number of patches written.

    Args:
        slide: Slide file (opened with OpenSlide, as CLAM does).
        coords_h5: CLAM coords file (see :func:`write_coords_h5`).
        encoder: Patch encoder (eval mode, moved to ``device`` here).
        out_h5: Output HDF5 (overwritten): ``features`` (N, D) float32 and ``coords`` (N, 2) int32.
        batch_size: Patches per forward pass.
        num_workers: DataLoader workers (:func:`clam_num_workers` gives CLAM's choice).
        device: Where the model runs.
        interpolation: Resize filter (CLAM: bilinear).
    """
    import openslide
    import torch
    from torch.utils.data import DataLoader

    encoder = encoder.eval().to(device)
    wsi = openslide.open_slide(str(slide))
    try:
        dataset = ClamStyleBag(
            coords_h5, wsi, clam_transforms(encoder.mean, encoder.std, encoder.input_size_px, interpolation)
        )
        kwargs = {"num_workers": num_workers, "pin_memory": device.type == "cuda"} if num_workers else {}
        loader = DataLoader(dataset=dataset, batch_size=batch_size, **kwargs)
        mode, written = "w", 0
        for data in loader:
            with torch.inference_mode():
                batch = data["img"].to(device, non_blocking=True)
                coords = data["coord"].numpy().astype(np.int32)
                features = encoder(batch).cpu().numpy().astype(np.float32)
            save_hdf5(out_h5, {"features": features, "coords": coords}, mode=mode)
            mode, written = "a", written + len(features)
    finally:
        wsi.close()
    return written
