"""`version`, `doctor` and `slide-info` commands."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sammil_deploy import __version__
from sammil_deploy.cli.app import app, print_json, stdout


@app.command("version")
def version_cmd() -> None:
    """Print the toolkit version."""
    stdout.print(f"sammil-deploy {__version__}")


def environment_report() -> dict[str, Any]:
    """What is installed: torch/CUDA, onnxruntime providers, TensorRT, OpenSlide (no heavy work)."""
    report: dict[str, Any] = {"sammil_deploy": __version__}
    for dist in (
        "torch",
        "torchvision",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "segment-anything",
        "openslide-python",
        "openslide-bin",
        "h5py",
        "numpy",
    ):
        try:
            report[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            report[dist] = None
    import torch

    report["cuda_available"] = torch.cuda.is_available()
    report["cuda_version"] = torch.version.cuda
    report["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        report["onnxruntime_providers"] = onnxruntime.get_available_providers()
        if "TensorrtExecutionProvider" in report["onnxruntime_providers"]:  # listed even when it cannot load
            report["onnxruntime_tensorrt_library"] = _loadable("libnvinfer.so.10")
    try:
        import openslide

        report["openslide_library"] = openslide.__library_version__
    except ImportError as err:
        report["openslide_library"] = f"unavailable: {err}"
    return report


def _loadable(library: str) -> str:
    """``"ok"`` when the dynamic loader finds ``library``, else why not."""
    import ctypes

    try:
        ctypes.CDLL(library)
    except OSError as err:
        return f"unavailable: {err}"
    return "ok"


@app.command("doctor")
def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what is installed: torch, CUDA, onnxruntime providers, TensorRT, OpenSlide."""
    report = environment_report()
    if as_json:
        print_json(report)
        return
    table = Table("component", "status", title="sammil-deploy doctor")
    for key, value in report.items():
        shown = "[red]not installed[/red]" if value is None else str(value)
        table.add_row(key, shown)
    stdout.print(table)


@app.command("slide-info")
def slide_info_cmd(
    slide: Annotated[Path, typer.Argument(help="Slide file (.svs, .tif, .ndpi, .mrxs, ...).")],
    mpp: Annotated[float | None, typer.Option(help="Microns per level-0 pixel, if the file has none.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show a slide's levels, downsamples, mpp and objective power."""
    from sammil_deploy.slide import open_slide

    with open_slide(slide, mpp=mpp) as reader:
        info = reader.info
    payload = {
        "path": str(info.path),
        "vendor": info.vendor,
        "dimensions_wh": info.dimensions_wh,
        "level_count": info.level_count,
        "level_dimensions_wh": info.level_dimensions_wh,
        "level_downsamples": info.level_downsamples,
        "mpp": info.mpp,
        "mpp_source": info.mpp_source,
        "objective_power": info.objective_power,
    }
    if as_json:
        print_json(payload)
        return
    stdout.print(
        f"[bold]{info.path.name}[/bold]  vendor={info.vendor}  mpp={info.mpp} ({info.mpp_source})  "
        f"objective={info.objective_power}"
    )
    table = Table("level", "width", "height", "downsample")
    for level, ((w, h), ds) in enumerate(zip(info.level_dimensions_wh, info.level_downsamples, strict=True)):
        table.add_row(str(level), str(w), str(h), f"{ds:.3f}")
    stdout.print(table)
