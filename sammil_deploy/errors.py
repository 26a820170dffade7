"""Error hierarchy. Every message says what failed, on which input, and how to fix it."""


class SammilError(Exception):
    """Base of every error the toolkit raises on purpose; the CLI exits with its ``exit_code``.

    Exit codes: 1 bad input or configuration (this class), 2 command-line usage (Click), 3 the output cannot be
    written (:class:`OutputError`).
    """

    exit_code = 1


class ConfigError(SammilError):
    """A configuration value or a combination of options is invalid."""


class MissingDependencyError(SammilError):
    """An optional dependency is not installed."""


class SlideError(SammilError):
    """A slide cannot be opened or read."""


class UnsupportedSlideError(SlideError):
    """The file is not a slide any reader understands (or is corrupt)."""


class TissueError(SammilError):
    """No usable tissue was found."""


class PatchingError(SammilError):
    """No patch fits the tissue, or the patch geometry is impossible."""


class SegmentationError(SammilError):
    """Spatial-context segmentation (SAM or fallback) failed."""


class WeightsError(SammilError):
    """Model weights are missing, unreadable or do not match the model."""


class FeatureStoreError(SammilError):
    """A feature/patch HDF5 (or .pt) file is missing, malformed or inconsistent."""


class CheckpointError(SammilError):
    """A MIL checkpoint is missing, malformed, or does not match the data."""


class ExportError(SammilError):
    """Export to ONNX or TensorRT failed."""


class ParityError(ExportError):
    """An exported artifact does not reproduce the PyTorch model within tolerance."""


class BackendError(SammilError):
    """A runtime backend cannot load or run an artifact."""


class InputSpecError(BackendError):
    """Inputs given to a backend do not match its declared names, shapes or dtypes."""


class OutputError(SammilError):
    """An output cannot be written: disk full, read-only file system, permission denied, unusable folder.

    The environment, not the input, is at fault, so a batch stops (the next slide would fail the same way)
    keeping what finished; rerunning after the fix resumes. Exit code 3.
    """

    exit_code = 3

    def __init__(self, message: str, *, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.errno_code = errno_code
