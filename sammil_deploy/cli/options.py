"""Options shared by several commands, declared once (`Annotated` aliases: the help text stays consistent)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Redo slides whose outputs exist.")]
PresetOpt = Annotated[str | None, typer.Option(help="CLAM tissue preset: bwh_biopsy, tcga or bwh_resection.")]
MppOpt = Annotated[float | None, typer.Option(help="Microns per level-0 pixel, if the slide has none.")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")]
BatchSizeOpt = Annotated[int | None, typer.Option(help="Patches per encoder call.")]
NumWorkersOpt = Annotated[int | None, typer.Option(help="Patch-reader processes (0: read in this process).")]
SegmenterOpt = Annotated[str | None, typer.Option(help="auto (SAM if a checkpoint is given), sam or fallback.")]
SamCheckpointOpt = Annotated[Path | None, typer.Option(help="Local SAM checkpoint (sam_vit_h_4b8939.pth).")]
SamModelOpt = Annotated[str | None, typer.Option(help="vit_h, vit_l, vit_b, tiny or auto (from the checkpoint).")]
EncoderWeightsOpt = Annotated[
    Path | None, typer.Option(help="Encoder weights: torchvision resnet50 .pth or .safetensors.")
]
InterpolationOpt = Annotated[str | None, typer.Option(help="Patch resize: bicubic (SAM-MIL) or bilinear (CLAM).")]
# One meaning of --patch-size in every command: the patch side in px at the patch level or target mpp
# (patch.patch_level / patch.target_mpp; level 0 unless the config says otherwise). A side that is always in
# level-0 px is spelled --patch-size-level0.
PatchSizeOpt = Annotated[
    int | None,
    typer.Option(help="Patch side in px at the config's patch level or target mpp (level 0 by default; SAM-MIL: 512)."),
]
