"""Rendering shared by the commands: batch progress bars, per-slide tables, warnings, failures, exit codes.

Everything human goes to stderr (``console``); ``--json`` payloads and result tables meant for pipes go to stdout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from sammil_deploy.cli.app import console, stdout

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from sammil_deploy.pipeline.batch import BatchSummary

STATUS = {
    "done": "[green]done[/green]",
    "skipped": "skipped (exists)",
    "locked": "[yellow]locked (other run)[/yellow]",
    "failed": "[red]failed[/red]",
}
SECONDS = None  # a column of batch_table that shows the record's wall time instead of a result field
Column = tuple[str, Callable[[Any], str] | None]


@dataclass
class BatchProgress:
    """Callbacks for a batch run: ``on_record`` advances the item bar, ``stage`` describes the current item."""

    bar: Progress
    items: TaskID
    current: TaskID | None

    def on_record(self, _record: object) -> None:
        """One item finished (done, skipped or failed)."""
        self.bar.advance(self.items)

    def stage(self, description: str, done: int, total: int) -> None:
        """Show ``description`` and ``done``/``total`` on the current item's bar."""
        if self.current is not None:
            self.bar.update(self.current, description=description, completed=done, total=total)


def progress_bar(
    *, percent: bool = False, status: bool = False, transient: bool = True, enabled: bool = True
) -> Progress:
    """The toolkit's progress bar on stderr; a disabled one draws nothing (``--json``).

    Columns: description, bar, done/total (or ``percent``), elapsed time, and with ``status`` the task's
    ``status`` field (``bar.add_task(..., status="")``).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    counter = TextColumn("{task.percentage:>3.0f}%") if percent else MofNCompleteColumn()
    columns = [TextColumn("{task.description}"), BarColumn(), counter, TimeElapsedColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    return Progress(*columns, console=console, transient=transient, disable=not enabled)


@contextlib.contextmanager
def batch_progress(
    total: int, *, label: str = "slides", stages: bool = True, enabled: bool = True
) -> Iterator[BatchProgress]:
    """A transient bar on stderr over ``total`` items (plus a bar for the current item's stage when ``stages``).

    With ``enabled`` False (``--json``) nothing is drawn; the callbacks still work.
    """
    with progress_bar(enabled=enabled) as bar:
        items = bar.add_task(label, total=total)
        yield BatchProgress(bar, items, bar.add_task("", total=None) if stages else None)


def batch_table(summary: BatchSummary[Any], title: str, columns: Sequence[Column]) -> Table:
    """One row per slide: name, status, then ``columns`` (header, cell of a finished result, or SECONDS)."""
    table = Table(title=title)
    name_px = min(40, max((len(r.slide.name) for r in summary.records), default=5))
    table.add_column("slide", no_wrap=True, min_width=name_px)  # whole names, so they can be found in logs
    for header in ("status", *(header for header, _ in columns)):
        table.add_column(header)
    for record in summary.records:
        result = record.result
        cells = [
            f"{record.seconds:.2f}" if cell is SECONDS else "" if result is None else cell(result)
            for _, cell in columns
        ]
        table.add_row(record.slide.name, STATUS.get(record.status, record.status), *cells)
    return table


def render_error(message: object) -> None:
    """A red ``error:`` line on stderr, unwrapped (so a path in it can be copied whole)."""
    console.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)


def render_failures(summary: BatchSummary[Any]) -> None:
    """One ``error:`` line per failed slide (its detail names the slide and the fix)."""
    for record in summary.failed:
        render_error(record.detail)


def exit_for(summary: BatchSummary[Any]) -> NoReturn:
    """Exit 0 when every slide succeeded (or was skipped), else 1 (the failures were reported)."""
    raise typer.Exit(code=0 if summary.all_succeeded else 1)


def warn(message: str) -> None:
    """A yellow ``warning:`` line on stderr."""
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def wide_stdout(width: int) -> Console:
    """stdout, ``width`` columns wide when piped (a pipe reports 80: too narrow); a terminal keeps its own."""
    return stdout if stdout.is_terminal else Console(width=width)


def paths_line(label: str, *paths: Path | None) -> None:
    """``label: a, b`` on stderr for the files written (nothing when none was)."""
    written = [str(p) for p in paths if p is not None]
    if written:
        console.print(f"{label} {', '.join(written)}", highlight=False)
