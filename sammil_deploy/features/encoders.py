"""Patch encoder registry: ``create_encoder(name, weights=...)`` is the one front door.

An encoder maps a normalised ``(B, 3, S, S)`` float batch to ``(B, D)`` features and carries the preprocessing it
expects (input size, mean/std, resize filter) and the provenance of its weights in :class:`EncoderMeta`.
Weights come from an explicit local file; a download happens only when the caller passes ``download=True``;
without weights an encoder is built only when the caller explicitly asks for random weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sammil_deploy.errors import ConfigError, WeightsError
from sammil_deploy.registry import Registry

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_WEIGHTS = "random"


@dataclass(frozen=True, slots=True)
class EncoderMeta:
    """What an encoder expects and where its weights came from (stored in feature files and ONNX metadata).

    Attributes:
        name: Registry name (``resnet50_trunc``).
        dim: Output feature dimension D.
        input_size_px: Side S of the square input the encoder expects.
        mean: Per-channel RGB mean subtracted after scaling pixels to [0, 1].
        std: Per-channel RGB std divided after subtracting the mean.
        interpolation: Resize filter of its reference preprocessing (``bicubic`` as SAM-MIL, ``bilinear`` as CLAM).
        weights_sha256: SHA-256 of the weights file, or ``"random"``.
        weights_source: File path or download URL of the weights, or ``"random"``.
    """

    name: str
    dim: int
    input_size_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    weights_sha256: str
    weights_source: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/HDF5-attr friendly)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "input_size_px": self.input_size_px,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source,
        }


_ENCODERS: Registry[Callable[..., PatchEncoder]] = Registry("encoder")
register_encoder = _ENCODERS.register  # decorator: @register_encoder("name") on a builder
available_encoders = _ENCODERS.names  # sorted registry names


def create_encoder(
    name: str, *, weights: Path | str | None = None, allow_random: bool = False, download: bool = False
) -> PatchEncoder:
    """Build a registered encoder in eval mode on the CPU.

    Args:
        name: Registry name, e.g. ``resnet50_trunc``.
        weights: Local weights file (``.pth``/``.pt`` state dict or ``.safetensors``).
        allow_random: Build with random weights when no weights are given (demos and tests only).
        download: Fetch the reference weights into the torch hub cache (needs a connection).

    Raises:
        ConfigError: Unknown name, or conflicting options (weights with download or random).
        WeightsError: No weights and neither ``download`` nor ``allow_random``; unreadable or mismatched file.
    """
    builder = _ENCODERS.get(name)
    chosen = [
        opt
        for opt, on in (("weights", weights is not None), ("download", download), ("allow_random", allow_random))
        if on
    ]
    if len(chosen) > 1:
        raise ConfigError(f"encoder {name}: choose one weights source, got {' + '.join(chosen)}")
    if not chosen:
        raise WeightsError(
            f"encoder {name}: no weights given; pass --encoder-weights PATH (torchvision ResNet-50 ImageNet "
            "state dict, e.g. resnet50-19c8e357.pth / resnet50-0676ba61.pth, or .safetensors), or "
            "--download-weights (needs a connection), or --allow-random-weights for a demo"
        )
    encoder = builder(weights=Path(weights) if weights is not None else None, download=download)
    return encoder.eval()


class PatchEncoder(nn.Module):
    """Base of every patch encoder: ``forward((B, 3, S, S) float normalised) -> (B, D) float``.

    Subclasses set :attr:`meta` through :meth:`_set_meta` once their weights are loaded.
    """

    meta: EncoderMeta

    def _set_meta(self, meta: EncoderMeta) -> None:
        self.meta = meta

    @property
    def name(self) -> str:
        """Registry name."""
        return self.meta.name

    @property
    def dim(self) -> int:
        """Output feature dimension D."""
        return self.meta.dim

    @property
    def input_size_px(self) -> int:
        """Input side S in pixels."""
        return self.meta.input_size_px

    @property
    def mean(self) -> tuple[float, float, float]:
        """RGB normalisation mean (pixels scaled to [0, 1])."""
        return self.meta.mean

    @property
    def std(self) -> tuple[float, float, float]:
        """RGB normalisation std."""
        return self.meta.std

    @property
    def interpolation(self) -> str:
        """Resize filter of the reference preprocessing."""
        return self.meta.interpolation

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights file, or ``"random"``."""
        return self.meta.weights_sha256


class ResNet50Trunc(PatchEncoder):
    """ResNet-50 stem + layer1-3 + global average pool: (B, 3, 224, 224) -> (B, 1024) (CLAM/SAM-MIL).

    Submodule names equal torchvision's, so a torchvision ``resnet50`` state dict loads directly (its
    ``layer4.*`` and ``fc.*`` keys are dropped).
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        full = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = full.conv1, full.bn1, full.relu, full.maxpool
        self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) normalised float -> (B, 1024)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.avgpool(x).flatten(1)


_DROPPED_PREFIXES = {"resnet50_trunc": ("layer4.", "fc.")}


@register_encoder("resnet50_trunc")
def _build_resnet50_trunc(*, weights: Path | None, download: bool) -> PatchEncoder:
    model = ResNet50Trunc()
    if weights is not None:
        state = load_state_dict_file(weights)
        sha, source = file_sha256(weights), str(weights)
    elif download:
        state, sha, source = _download_torchvision_resnet50()
    else:
        log.warning("resnet50_trunc: random weights (demo/test only); features are not meaningful")
        state, sha, source = None, RANDOM_WEIGHTS, RANDOM_WEIGHTS
    if state is not None:
        load_matching(
            model, state, name="resnet50_trunc", source=source, ignore_prefixes=_DROPPED_PREFIXES["resnet50_trunc"]
        )
    model._set_meta(
        EncoderMeta(
            name="resnet50_trunc",
            dim=1024,
            input_size_px=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bicubic",
            weights_sha256=sha,
            weights_source=source,
        )
    )
    return model


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth``/``.pt`` file, without unpickling arbitrary objects.

    A checkpoint dict holding the weights under ``state_dict`` or ``model`` is unwrapped, and a DataParallel
    ``module.`` prefix is stripped.

    Raises:
        WeightsError: Missing or unreadable file, or no tensors in it.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; check the --encoder-weights path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001  (torch/safetensors raise many types; all mean "unreadable")
        raise WeightsError(
            f"{path}: cannot read weights ({type(err).__name__}: {err}); expected a torch state dict (.pth) "
            "or a .safetensors file"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors; expected a torch state dict or .safetensors")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_matching(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    name: str,
    source: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``model`` non-strictly, but require every model key to be present with its shape.

    Keys under ``ignore_prefixes`` (parts of the full network the truncated model does not keep) are dropped
    silently; other unexpected keys are logged.

    Raises:
        WeightsError: Listing the missing keys or the mismatched shapes.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise WeightsError(
            f"{source}: not {name} weights; missing keys: {shown}. Pass a torchvision ResNet-50 state dict "
            "(or one saved from this encoder)"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise WeightsError(f"{source}: shapes do not match {name}: {'; '.join(wrong[:4])}")
    extra = [k for k in state if k not in expected and not k.startswith(ignore_prefixes)]
    if extra:
        log.warning("%s: %d keys not used by %s (e.g. %s)", source, len(extra), name, extra[0])
    model.load_state_dict({k: state[k] for k in expected}, strict=True)


def _download_torchvision_resnet50() -> tuple[dict[str, torch.Tensor], str, str]:
    """Torchvision IMAGENET1K_V1 weights (the ones SAM-MIL/CLAM use) via the hub cache; only on request."""
    from torchvision.models import ResNet50_Weights

    enum = ResNet50_Weights.IMAGENET1K_V1
    try:
        state = enum.get_state_dict(progress=False, check_hash=True)
    except OSError as err:  # URLError is an OSError
        raise WeightsError(
            f"cannot download {enum.url} ({err}); without a connection, pass --encoder-weights PATH to a local file"
        ) from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    sha = file_sha256(cached) if cached.is_file() else "unknown"
    return state, sha, enum.url


def file_sha256(path: Path, *, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


class NormalizedEncoder(nn.Module):
    """``patches (B, S, S, 3) uint8 RGB -> features (B, D) float32`` = encoder(normalise(patches / 255)).

    The deployed encoder's I/O contract: PyTorch inference runs this module and the export stage exports it, so
    every backend is fed the same raw uint8 patches and does the normalisation itself.
    """

    def __init__(self, encoder: PatchEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        scale = torch.tensor(encoder.std, dtype=torch.float32) * 255.0
        self.register_buffer("mean_0_255", (torch.tensor(encoder.mean) * 255.0).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std_0_255", (1.0 / scale).view(1, 3, 1, 1), persistent=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""
        # Cast first: TensorRT accepts a UINT8 network input only when it feeds a Cast directly
        # (NVIDIA/TensorRT#3985), so the transpose runs on float32.
        x = patches.to(torch.float32).permute(0, 3, 1, 2)
        return self.encoder((x - self.mean_0_255) * self.inv_std_0_255)
