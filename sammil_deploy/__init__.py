"""sammil-deploy: SAM-MIL whole-slide-image classification from training to fast GPU deployment."""

__version__ = "0.1.0"
