"""Helpers shared by the test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run ``sammil-deploy ARGS`` through the console-script entry point; return (exit code, stdout, stderr).

    Goes through :func:`sammil_deploy.cli.main`, so errors are mapped to exit codes exactly as for a user.
    """
    from sammil_deploy.cli import main

    monkeypatch.setattr(sys, "argv", ["sammil-deploy", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def files_under(root: Path) -> list[str]:
    """Sorted POSIX paths of every file below ``root`` relative to it ([] when it does not exist)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []
