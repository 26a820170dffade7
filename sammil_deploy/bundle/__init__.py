"""Inference bundle: one checked folder with everything ``infer`` loads (layout in ``bundle.manifest``).

Front door::

    bundle = make_bundle(out_dir, checkpoint, export_dir, preprocess)   # bundle.build
    bundle = load_bundle(out_dir)                                       # bundle.load (checks in bundle.checks)
"""

from sammil_deploy.bundle.build import make_bundle
from sammil_deploy.bundle.load import load_bundle
from sammil_deploy.bundle.manifest import MANIFEST_NAME, Bundle, BundleArtifact

__all__ = ["MANIFEST_NAME", "Bundle", "BundleArtifact", "load_bundle", "make_bundle"]
