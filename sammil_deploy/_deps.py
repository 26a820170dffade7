"""Lazy import of optional heavy dependencies with an actionable error."""

import importlib
from types import ModuleType

from sammil_deploy.errors import MissingDependencyError

_PIP_HINT = {
    "ort": "pip install 'sammil-deploy[ort]'  (or [ort-gpu] on a CUDA machine)",
    "trt": "pip install tensorrt --extra-index-url https://pypi.nvidia.com  (or use the docker/ GPU image)",
    "ray": "pip install 'ray[default]'",
}


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the install command for ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        hint = _PIP_HINT.get(extra, f"pip install 'sammil-deploy[{extra}]'")
        raise MissingDependencyError(f"{module} is not installed ({err}); install it with: {hint}") from None
