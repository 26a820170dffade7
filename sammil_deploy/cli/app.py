"""The Typer app, shared options and rendering helpers. Commands live in sibling modules."""

from __future__ import annotations

import json
import logging
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    name="sammil-deploy",
    help="SAM-MIL whole-slide-image classification: preprocess, extract, train, export, infer, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
stdout = Console()


class State:
    """Process-wide CLI flags set by the root callback (debug controls tracebacks in main())."""

    debug: bool = False


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    State.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def print_json(payload: Any) -> None:
    """Machine-readable output on stdout (nothing else goes there in --json mode)."""
    stdout.print_json(json.dumps(payload, default=str))
