"""The one environment probe: library versions, and the machine (CPU, memory, GPU, driver, CUDA/cuDNN, git commit).

:func:`package_versions` (cheap: package metadata, and torch for its build tag) is what checkpoints and infer
outputs record; :func:`capture_environment` adds the machine, for benchmark reports and ``doctor``. So all of them
carry the same version fields. Each probe is best effort: a missing library or tool gives ``None`` for its
entries, never an error.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from sammil_deploy import __version__

# Version fields -> the distributions that provide them (the first one installed counts).
PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "safetensors": ("safetensors",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "segment_anything": ("segment-anything", "segment_anything"),
    "openslide_python": ("openslide-python",),
    "openslide_bin": ("openslide-bin",),
    "h5py": ("h5py",),
}

REQUIRED_KEYS = (
    "timestamp_utc",
    "sammil_deploy",
    "git_sha",
    "git_dirty",
    "python",
    "platform",
    "cpu_model",
    "cpu_logical_cores",
    "cpu_affinity_cores",
    "ram_gb",
    "torch",
    "torch_threads",
    "cuda_available",
    "cuda_runtime",
    "cudnn",
    "gpus",
    "gpu_driver",
    "tensorrt",
    "onnxruntime",
    "onnxruntime_providers",
    "numpy",
    "openslide",
)


def package_versions() -> dict[str, str | None]:
    """``sammil_deploy``, ``python`` and each of :data:`PACKAGES` -> its version, ``None`` when not installed."""
    versions: dict[str, str | None] = {"sammil_deploy": __version__, "python": platform.python_version()}
    for field, dists in PACKAGES.items():
        versions[field] = next((v for v in map(_version, dists) if v is not None), None)
    if versions["torch"] is not None:  # the module's version carries the build (2.14.1+cu130), the metadata may not
        import torch

        versions["torch"] = torch.__version__
    return versions


def capture_environment(*, repo_dir: Path | None = None) -> dict[str, Any]:
    """Describe this machine and software stack (JSON-able; see ``REQUIRED_KEYS``).

    Args:
        repo_dir: Git checkout to read the commit of (default: the folder holding this package's source).
    """
    env: dict[str, Any] = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **package_versions(),
        "platform": platform.platform(),
        **_git(repo_dir or Path(__file__).resolve().parents[1]),
        **_cpu(),
        **_torch(),
        **_onnxruntime(),
        "openslide": _openslide(),
    }
    env["gpu_driver"] = _nvidia_smi_driver() if env["cuda_available"] else None
    return env


def hardware_label(env: dict[str, Any]) -> str:
    """One line naming the hardware: ``"NVIDIA H100 (driver 550.54); ..."`` or ``"AMD EPYC, 2 cores, no GPU"``.

    A ``machine`` entry (the user's own name for the machine) is put first.
    """
    gpus = env.get("gpus") or []
    cpu = f"{env.get('cpu_model') or 'unknown CPU'}, {env.get('cpu_affinity_cores')} cores"
    found = f"{gpus[0]['name']} (driver {env.get('gpu_driver') or '?'}); {cpu}" if gpus else f"{cpu}, no GPU"
    return f"{env['machine']}: {found}" if env.get("machine") else found


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(repo: Path) -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"git_sha": sha, "git_dirty": None if status is None else bool(status)}


def _cpu() -> dict[str, Any]:
    model = None
    physical: set[tuple[str, str]] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    phys_id = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            physical.add((phys_id, value))
    ram_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):  # sysconf names differ off Linux
        ram_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_physical_cores": len(physical) or None,
        "cpu_affinity_cores": affinity,
        "ram_gb": ram_gb,
    }


def _torch() -> dict[str, Any]:
    out: dict[str, Any] = {
        "torch_threads": None,
        "cuda_available": False,
        "cuda_runtime": None,
        "cudnn": None,
        "gpus": [],
    }
    if importlib.util.find_spec("torch") is None:
        return out
    import torch

    out.update(torch_threads=torch.get_num_threads())
    if not torch.cuda.is_available():
        return out
    out.update(
        cuda_available=True,
        cuda_runtime=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
        gpus=[_gpu(torch, i) for i in range(torch.cuda.device_count())],
    )
    return out


def _gpu(torch: Any, index: int) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    return {
        "index": index,
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gb": round(props.total_memory / 1024**3, 1),
        "multiprocessors": props.multi_processor_count,
    }


def _nvidia_smi_driver() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def _onnxruntime() -> dict[str, Any]:
    if importlib.util.find_spec("onnxruntime") is None:
        return {"onnxruntime_providers": []}
    import onnxruntime as ort

    out: dict[str, Any] = {"onnxruntime_providers": list(ort.get_available_providers())}
    if "TensorrtExecutionProvider" in out["onnxruntime_providers"]:  # listed even when TensorRT cannot load
        out["onnxruntime_tensorrt_library"] = _loadable("libnvinfer.so.10")
    return out


def _loadable(library: str) -> str:
    """``"ok"`` when the dynamic loader finds ``library``, else why not."""
    import ctypes

    try:
        ctypes.CDLL(library)
    except OSError as err:
        return f"unavailable: {err}"
    return "ok"


def _openslide() -> str | None:
    if importlib.util.find_spec("openslide") is None:
        return None
    import openslide

    return getattr(openslide, "__library_version__", None) or _version("openslide-python")
