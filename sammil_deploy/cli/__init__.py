"""Command-line interface `sammil-deploy`: each command parses, calls one library function, renders."""

from __future__ import annotations

import sys

from sammil_deploy.cli import (
    benchmark,  # noqa: F401
    context,  # noqa: F401  (add-context, convert)
    data,  # noqa: F401  (make-demo-data)
    demo,  # noqa: F401
    export,  # noqa: F401
    extract,  # noqa: F401
    infer,  # noqa: F401  (infer, make-bundle)
    info,  # noqa: F401  (registers commands)
    preprocess,  # noqa: F401
    report,  # noqa: F401  (report: the cohort page)
    train,  # noqa: F401  (train, evaluate, import-checkpoint)
)
from sammil_deploy.cli.app import State, app, console
from sammil_deploy.errors import SammilError

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: the one place that maps SammilError to a message and exit code 1.

    Usage errors keep Click's exit code 2; other exceptions are bugs and keep their traceback.
    """
    try:
        app()
    except SammilError as err:
        if State.debug:
            raise
        console.print(f"[red]error:[/red] {err}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(1)
