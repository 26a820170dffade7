"""Devices: the one place a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) is checked and resolved.

Every stage (feature extraction, training, SAM, inference, benchmarks, the backends themselves) resolves its
device here, so a GPU request on a machine without one fails the same way everywhere, and the command line can
refuse it before any slide is opened (:func:`check_device`). :func:`ort_device_options` maps a resolved device
to the ONNX Runtime backend's ``providers`` / ``device_id``.
"""

from __future__ import annotations

import re
from typing import Any

from sammil_deploy.errors import ConfigError

_DEVICE = re.compile(r"cuda(?::(\d+))?")


def resolve_device(device: Any, *, option: str = "--device") -> str:
    """``device`` as ``"cpu"`` or ``"cuda:N"``.

    ``auto`` is the current CUDA device when one is visible, else the CPU; ``cuda`` is the current CUDA device.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``.
        option: Where the value came from, named in errors (``--device``, ``train.device``, ``suite device``).

    Raises:
        ConfigError: Unknown name, no CUDA GPU visible (naming the torch build), or an index past the GPU count.
    """
    import torch

    name = str(device).strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "auto":
        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    match = _DEVICE.fullmatch(name)
    if match is None:
        raise ConfigError(f"{option} {device!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        fix = f"use {option} cpu (or auto)" if option.startswith("--") else f"set {option} = 'cpu' (or 'auto')"
        raise ConfigError(
            f"{option} {device!r}: no CUDA GPU is visible here (torch {torch.__version__}, {build}); "
            f"{fix}, or run on a GPU machine"
        )
    count = torch.cuda.device_count()
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    if index >= count:
        raise ConfigError(f"{option} {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return f"cuda:{index}"


def check_device(device: str, *, option: str = "--device") -> None:
    """Fail fast at the command line: :func:`resolve_device`'s checks, before any slide is opened."""
    resolve_device(device, option=option)


def cuda_index(device: str) -> int:
    """The N of a resolved ``cuda:N`` device (0 for ``cpu``, where a CUDA index is unused)."""
    return int(device.split(":")[1]) if device.startswith("cuda:") else 0


def ort_device_options(device: str) -> dict[str, Any]:
    """ONNX Runtime backend options for a resolved device: ``{"providers": "cpu"|"cuda", "device_id": N}``."""
    return {"providers": "cuda" if device.startswith("cuda") else "cpu", "device_id": cuda_index(device)}
