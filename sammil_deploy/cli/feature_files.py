"""`add-context` (SAM context for CLAM feature files) and `convert` (our layout <-> official SAM-MIL layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sammil_deploy.cli.app import app, console, print_json
from sammil_deploy.cli.options import JsonOpt, MppOpt, OverwriteOpt
from sammil_deploy.cli.render import exit_for


@app.command("add-context")
def add_context_cmd(
    features: Annotated[Path, typer.Argument(help="CLAM feature .h5/.pt file, or a folder of them.")],
    slides: Annotated[Path, typer.Option(help="Folder with the slides (matched by file stem).")],
    out: Annotated[Path, typer.Option(help="Output folder for <stem>.h5.")],
    coords_dir: Annotated[Path | None, typer.Option(help="CLAM patches/ folder (needed for .pt inputs).")] = None,
    layout: Annotated[str, typer.Option(help="sammil (schema v1) or official (SAM-MIL's own layout).")] = "sammil",
    segmenter: Annotated[str | None, typer.Option(help="auto, sam or fallback.")] = None,
    sam_checkpoint: Annotated[Path | None, typer.Option(help="Local SAM .pth (segment-anything).")] = None,
    sam_model: Annotated[str | None, typer.Option(help="vit_h, vit_l, vit_b or auto.")] = None,
    membership: Annotated[str | None, typer.Option(help="footprint (default) or official (corner window).")] = None,
    mpp: MppOpt = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="CLAM tissue preset the patches were made with (bwh_biopsy, tcga, bwh_resection); frames the SAM "
            "image as extract/infer do. Our own feature files use the settings they recorded."
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Add SAM segments and group features to feature files extracted elsewhere, without re-extracting."""
    from sammil_deploy.config import apply_overrides
    from sammil_deploy.pipeline.add_context import add_context_files, find_feature_files
    from sammil_deploy.segment import SegmentConfig
    from sammil_deploy.tissue import TissueConfig, tissue_preset

    cfg = apply_overrides(
        SegmentConfig(),
        {"sam_checkpoint": sam_checkpoint, "sam_model": sam_model, "segmenter": segmenter, "membership": membership},
    )
    tissue = TissueConfig(**tissue_preset(preset)) if preset else None
    summary = add_context_files(
        find_feature_files(features), slides, out, cfg, tissue=tissue, layout=layout, coords_dir=coords_dir, mpp=mpp,  # type: ignore[arg-type]
        overwrite=overwrite,
        on_record=lambda r: console.print(f"{r.slide.name}: {r.status}" + (f" ({r.detail})" if r.detail else "")),
    )  # fmt: skip
    if as_json:
        print_json(summary.to_dict())
    else:
        table = Table("file", "status", "patches", "groups", "segmenter", title=f"add-context → {out}")
        for record in summary.records:
            bag = record.result
            ctx = bag.context if bag is not None else None
            table.add_row(
                record.slide.name, record.status, str(bag.n_patches) if bag else "", str(ctx.n_groups) if ctx else "",
                ctx.segmenter if ctx else (record.detail or ""),
            )  # fmt: skip
        console.print(table)
    exit_for(summary)


@app.command("convert")
def convert_cmd(
    src: Annotated[Path, typer.Argument(help="Feature .h5 (ours or official layout).")],
    out: Annotated[Path, typer.Option(help="Output .h5 path.")],
    to: Annotated[str, typer.Option(help="official (group rows appended) or sammil (schema v1).")] = "official",
    sam_info: Annotated[
        Path | None, typer.Option(help="Official sam_info/<slide>.h5, when it is separate from the features.")
    ] = None,
    patch_size_level0: Annotated[
        int, typer.Option(help="Patch side in level-0 px (official files do not record it).")
    ] = 512,
    old_patch_size: Annotated[int | None, typer.Option("--patch-size", hidden=True)] = None,
) -> None:
    """Move feature files between our layout and the official SAM-MIL layout."""
    from sammil_deploy.errors import ConfigError
    from sammil_deploy.features.store import convert_layout

    if old_patch_size is not None:  # --patch-size means px at the patch level elsewhere; this side is level-0
        raise ConfigError(f"convert: --patch-size is now --patch-size-level0 (level-0 px); pass "
                          f"--patch-size-level0 {old_patch_size}")  # fmt: skip
    written = convert_layout(src, out, to=to, sam_info=sam_info, patch_size_level0_px=patch_size_level0)
    console.print(f"wrote {written}")
