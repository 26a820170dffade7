"""Fail-fast device checks for the command line.

A GPU request on a machine without one is a one-line error before any slide is opened (the stages check again
when they build their models).
"""

from __future__ import annotations

import re

from sammil_deploy.errors import ConfigError

_DEVICE = re.compile(r"cuda(?::(\d+))?")


def check_device(device: str, *, option: str = "--device") -> None:
    """Refuse ``device`` unless it is ``auto``, ``cpu`` or a CUDA device this machine has.

    Raises:
        ConfigError: Unknown name, no CUDA GPU visible (naming the torch build), or an index past the GPU count.
    """
    import torch

    name = device.strip().lower()
    if name in ("auto", "cpu"):
        return
    match = _DEVICE.fullmatch(name)
    if match is None:
        raise ConfigError(f"{option} {device!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise ConfigError(
            f"{option} {device!r}: no CUDA GPU is visible here (torch {torch.__version__}, {build}); "
            "use --device cpu (or auto), or run on a GPU machine"
        )
    count = torch.cuda.device_count()
    if int(match.group(1) or 0) >= count:
        raise ConfigError(f"{option} {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
