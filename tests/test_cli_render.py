"""Shared CLI rendering: the per-slide table, failure lines and exit codes of batch commands."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from rich.console import Console

from sammil_deploy.cli import render
from sammil_deploy.pipeline.batch import BatchSummary, SlideRecord


def _summary() -> BatchSummary:
    done = SlideRecord(Path("a_long_slide_name.svs"), "done", 1.234, SimpleNamespace(n_patches=42))
    failed = SlideRecord(Path("b.svs"), "failed", 0.5, None, error_type="SlideError", detail="b.svs: not a slide")
    return BatchSummary([done, failed])


def _text(renderable: object) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_batch_table_rows_hold_result_cells_and_seconds():
    table = render.batch_table(_summary(), "extract → out", [("patches", lambda r: str(r.n_patches)),
                                                            ("seconds", render.SECONDS)])  # fmt: skip
    rows = [
        [cell.strip() for cell in line.strip("│ ").split("│")] for line in _text(table).splitlines() if ".svs" in line
    ]
    assert rows == [["a_long_slide_name.svs", "done", "42", "1.23"], ["b.svs", "failed", "", "0.50"]]


def test_failures_are_one_line_each_and_the_exit_code_says_so(capsys, monkeypatch):
    monkeypatch.setattr(render, "console", Console(stderr=True, width=40, color_system=None))
    render.render_failures(_summary())
    err = capsys.readouterr().err
    assert err.strip() == "error: b.svs: not a slide"
    with pytest.raises(typer.Exit) as failed:
        render.exit_for(_summary())
    assert failed.value.exit_code == 1
    with pytest.raises(typer.Exit) as ok:
        render.exit_for(BatchSummary(_summary().records[:1]))
    assert ok.value.exit_code == 0
