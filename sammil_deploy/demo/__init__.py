"""The one-command demo, above ``pipeline`` and ``bench``: ``run_demo(out_dir, DemoConfig())`` (``demo.run``).

Modules: ``config`` (settings, result, recipe), ``weights`` (the calibrated random encoder), ``sam`` (the tiny
random SAM), ``run`` (the stages).
"""

from sammil_deploy.demo.config import DemoConfig, DemoResult
from sammil_deploy.demo.run import run_demo

__all__ = ["DemoConfig", "DemoResult", "run_demo"]
