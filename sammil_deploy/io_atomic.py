"""The one way the toolkit writes a file: to ``<name>.partial``, then ``os.replace`` over the final name.

A reader (or a resumed run) therefore never sees a half-written file, and a failed write leaves nothing behind.
Faults of the environment (disk full, read-only file system, permission denied, an output parent that cannot
be created) become :class:`~sammil_deploy.errors.OutputError`: one line naming the path and what to do, which
the CLI maps to its own exit code and which stops a batch (the next slide cannot be written either).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sammil_deploy.errors import OutputError

PARTIAL_SUFFIX = ".partial"

# errno -> what the user should do; these are faults of where we write, not of what we write.
_ENV_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device; free space or choose another output folder, then rerun (finished "
    "outputs are kept)",
    errno.EDQUOT: "disk quota exceeded; free space or choose another output folder, then rerun",
    errno.EFBIG: "file too large for this file system; choose another output folder",
    errno.EROFS: "read-only file system; choose a writable output folder",
    errno.EACCES: "permission denied; choose a folder you can write to (or fix its permissions)",
    errno.EPERM: "operation not permitted; choose a folder you can write to (or fix its permissions)",
    errno.ENOTDIR: "a parent of this path is a file, not a folder; choose another output path",
    errno.ENOENT: "the output folder does not exist (or vanished); create it or choose another one",
    errno.EIO: "input/output error from the storage; check the device or choose another output folder",
}
# Errnos that concern the device as a whole, whatever file they were raised on.
# (EIO is not among them: reading a slide from failing media raises it too, and that is not an output fault.)
_DEVICE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def partial_path(path: Path) -> Path:
    """``<path>.partial``, where a file is built before it is renamed into place."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def environment_errno(err: BaseException) -> int | None:
    """The errno of an environment fault carried by ``err`` (OSError, or a library error quoting one), else None.

    Libraries that wrap the OS error in their own type (safetensors, h5py, protobuf) keep its text, so the
    message is matched against ``os.strerror`` of the known errnos.
    """
    if isinstance(err, OSError) and err.errno in _ENV_ERRNOS:
        return err.errno
    text = str(err)
    for code in _DEVICE_ERRNOS:
        if os.strerror(code) in text:
            return code
    return None


def output_error(err: BaseException, path: Path | None) -> OutputError | None:
    """``err`` as an OutputError if it is an environment fault of writing ``path``, else None (bug or bad input).

    With ``path`` None (the file being written is unknown) only device-wide faults (disk full, read-only file
    system, I/O error) qualify: a permission error or missing file could as well be about an input.
    """
    code = environment_errno(err)
    if code is None:
        return None
    where = getattr(err, "filename", None) or path
    if code not in _DEVICE_ERRNOS and (path is None or where is None or not _concerns(Path(where), Path(path))):
        return None  # e.g. a missing *input* file read inside the block: not an output fault
    return OutputError(f"cannot write {where}: {_ENV_ERRNOS[code]} [{errno.errorcode[code]}]", errno_code=code)


def _concerns(where: Path, path: Path) -> bool:
    """True if ``where`` is ``path``, its partial file, or one of its parent folders."""
    return where in (path, partial_path(path)) or where in path.parents


def ensure_dir(folder: Path) -> Path:
    """``mkdir -p folder``; an unwritable or impossible folder raises OutputError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if err.errno == errno.EEXIST:  # exist_ok covers folders only
            raise OutputError(f"cannot create folder {folder}: a file has that name; choose another path") from None
        raise output_error(err, folder) or err from None
    return folder


def check_writable(folder: Path) -> Path:
    """Create ``folder`` and write and remove a probe file in it, so a long run fails before, not after, its work.

    Raises:
        OutputError: The folder cannot be created or written.
    """
    folder = ensure_dir(folder)
    write_bytes(folder / f".sammil-write-check-{os.getpid()}", b"")
    (folder / f".sammil-write-check-{os.getpid()}").unlink()
    return folder


def _commit(tmp: Path, path: Path) -> None:
    """The rename that publishes a finished file (one function, so tests can inject a fault here)."""
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: Path, *, make_parent: bool = True) -> Iterator[Path]:
    """Yield ``<path>.partial`` to write; on success rename it over ``path``, on any failure remove it.

    Environment faults raised while writing or renaming become OutputError naming ``path``; other exceptions
    pass through unchanged (the partial file is removed either way).
    """
    path = Path(path)
    tmp = partial_path(path)
    if make_parent:
        ensure_dir(path.parent)
    try:
        yield tmp
        _commit(tmp, path)
    except BaseException as err:
        _remove_quietly(tmp)
        translated = output_error(err, path)
        if translated is not None:
            raise translated from err
        raise


def _remove_quietly(tmp: Path) -> None:
    with suppress(OSError):  # a read-only file system cannot have a partial file on it in the first place
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> Path:
    """``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path, payload: Any, *, compact: bool = False, sort_keys: bool = True) -> Path:
    """``payload`` as JSON (indented with a final newline, or ``compact``) to ``path`` atomically."""
    if compact:
        text = json.dumps(payload, separators=(",", ":"), sort_keys=sort_keys, default=str)
    else:
        text = json.dumps(payload, indent=2, sort_keys=sort_keys, default=str) + "\n"
    return write_text(path, text)


def write_png(path: Path, image: Any) -> Path:
    """An RGB(A)/grey uint8 array (or PIL image) as PNG at ``path`` atomically."""
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)


@contextmanager
def atomic_h5(path: Path) -> Iterator[Any]:
    """An ``h5py.File`` open on ``<path>.partial``, closed and renamed over ``path`` if the block succeeds."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        yield f


def save_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    """Torch tensors to a ``.safetensors`` file atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def save_onnx(path: Path, model: Any, **kwargs: Any) -> Path:
    """An ``onnx.ModelProto`` to ``path`` atomically (``kwargs`` go to ``onnx.save_model``)."""
    import onnx

    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp), **kwargs)
    return Path(path)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty ``<path>.partial`` folder to fill; on success it replaces ``path`` (an old one is removed).

    On failure the partial folder is removed; environment faults become OutputError naming ``path``.
    """
    import shutil

    path = Path(path)
    tmp = partial_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    ensure_dir(tmp)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        _commit(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        translated = output_error(err, path)
        if translated is not None:
            raise translated from err
        raise
