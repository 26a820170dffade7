"""Command-line interface `sammil-deploy`: each command parses, calls one library function, renders."""

from __future__ import annotations

import sys

from sammil_deploy.cli import (
    benchmark,  # noqa: F401
    data,  # noqa: F401  (make-demo-data)
    demo,  # noqa: F401
    export,  # noqa: F401
    extract,  # noqa: F401
    feature_files,  # noqa: F401  (add-context, convert)
    infer,  # noqa: F401  (infer, make-bundle)
    info,  # noqa: F401  (registers commands)
    preprocess,  # noqa: F401
    report,  # noqa: F401  (report: the cohort page)
    train,  # noqa: F401  (train, evaluate, import-checkpoint)
)
from sammil_deploy.cli.app import State, app
from sammil_deploy.cli.render import render_error
from sammil_deploy.errors import SammilError

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: the one place that maps errors to a message and an exit code.

    Exit codes: 0 success, 1 bad input/configuration or some slides failed, 2 usage (Click), 3 an output cannot
    be written (disk full, read-only, permission denied: :class:`~sammil_deploy.errors.OutputError`). An OSError
    of the environment that escaped the write helper is reported the same way; other exceptions are bugs and
    keep their traceback.
    """
    from sammil_deploy.io_atomic import output_error

    try:
        app()
    except (SammilError, OSError) as err:
        error = err if isinstance(err, SammilError) else output_error(err, None)
        if error is None or State.debug:
            raise
        render_error(error)
        sys.exit(error.exit_code)
