"""Faults of the environment: full disk, read-only file system, no permission, unusable output folder.

Real faults where the test may make them (a 256 KiB tmpfs, a read-only tmpfs: needs root and ``mount``; skipped
otherwise), and the same errnos injected at the one write helper everything goes through. Every writing command
must answer with one line naming the path, exit code 3, no partial file, and a batch must stop keeping what
finished.
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import write_small_slides
from helpers import files_under, run_cli

from sammil_deploy import io_atomic
from sammil_deploy.errors import OutputError, SammilError, SlideError
from sammil_deploy.io_atomic import atomic_path, ensure_dir, write_json
from sammil_deploy.pipeline.batch import run_batch

OUTPUT_ERROR_EXIT = 3


def _mount_tmpfs(where: Path, size: str, read_only: bool = False) -> None:
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs: anything larger does not fit."""
    where = tmp_path / "small_disk"
    _mount_tmpfs(where, "256k")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only(tmp_path):
    """A read-only file system (root ignores chmod, so a mount is the honest way)."""
    where = tmp_path / "read_only"
    _mount_tmpfs(where, "64k", read_only=True)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def _inject(monkeypatch, code: int, *, after: int = 0) -> None:
    """Make the helper's rename fail with ``code`` from the ``after``-th write on (the file body was written)."""
    calls = {"n": 0}
    real = io_atomic._commit

    def failing(tmp: Path, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(code, os.strerror(code), str(tmp))
        real(tmp, path)

    monkeypatch.setattr(io_atomic, "_commit", failing)


# --- the helper itself ----------------------------------------------------------------------------------------------


def _big_h5(path: Path, payload: np.ndarray) -> None:
    with io_atomic.atomic_h5(path) as f:
        f.create_dataset("x", data=payload)


def _big_onnx(path: Path, payload: np.ndarray) -> None:
    import onnx
    from onnx import helper, numpy_helper

    init = numpy_helper.from_array(payload.astype(np.float32), "w")
    node = helper.make_node("Identity", ["w"], ["y"])
    out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(payload.shape))
    io_atomic.save_onnx(path, helper.make_model(helper.make_graph([node], "g", [], [out], [init])))


WRITERS = {
    "bytes": lambda p, a: io_atomic.write_bytes(p, a.tobytes()),
    "json": lambda p, a: io_atomic.write_json(p, {"values": a.tolist()}),
    "png": lambda p, a: io_atomic.write_png(p, a.reshape(-1, 512, 3)[:, :, :3].astype(np.uint8)),
    "hdf5": _big_h5,
    "safetensors": lambda p, a: io_atomic.save_safetensors(p, {"w": __import__("torch").from_numpy(a.copy())}),
    "onnx": _big_onnx,
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_writer_on_a_full_disk_raises_output_error_and_leaves_nothing(full_disk, kind):
    payload = np.random.default_rng(0).integers(0, 255, size=(1536, 512), dtype=np.uint8).astype(np.float32)
    target = full_disk / "out" / f"big.{kind}"
    with pytest.raises(OutputError) as info:
        WRITERS[kind](target, payload)
    message = str(info.value)
    assert str(target) in message or str(io_atomic.partial_path(target)) in message
    assert "no space left" in message
    assert "ENOSPC" in message
    assert "\n" not in message
    assert info.value.exit_code == OUTPUT_ERROR_EXIT
    assert files_under(full_disk) == []  # neither the file nor its .partial


def test_a_small_file_still_fits_on_that_disk(full_disk):
    path = write_json(full_disk / "small.json", {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert files_under(full_disk) == ["small.json"]


def test_read_only_file_system_names_the_folder(read_only):
    with pytest.raises(OutputError, match=r"read-only file system.*\[EROFS\]") as info:
        write_json(read_only / "runs" / "a.json", {})
    assert str(read_only / "runs") in str(info.value)


def test_output_parent_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(OutputError, match="a file has that name"):
        ensure_dir(tmp_path / "taken")
    with pytest.raises(OutputError, match=r"ENOTDIR|a file has that name"):
        write_json(tmp_path / "taken" / "sub" / "a.json", {})


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EACCES, "permission denied")],
)
def test_injected_errno_at_the_rename(tmp_path, monkeypatch, code, words):
    _inject(monkeypatch, code)
    with pytest.raises(OutputError, match=words):
        io_atomic.write_text(tmp_path / "a.txt", "hello")
    assert files_under(tmp_path) == []


def test_other_failures_are_not_output_errors_and_leave_no_partial(tmp_path):
    def half_then_bug(path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("boom")

    def copy_missing_input(path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_bytes((tmp_path / "elsewhere" / "input.csv").read_bytes())

    with pytest.raises(ValueError, match="boom"):
        half_then_bug(tmp_path / "a.bin")
    with pytest.raises(FileNotFoundError):  # a missing *input* is not an output fault
        copy_missing_input(tmp_path / "b.bin")
    assert files_under(tmp_path) == []


# --- the batch loop: stop on an output fault, keep what finished, resume -------------------------------------------


def test_batch_stops_on_output_error_keeps_finished_and_resumes(tmp_path, monkeypatch):
    slides = [tmp_path / f"s{i}.svs" for i in range(4)]
    out = tmp_path / "out"
    seen: list[str] = []

    def process(slide: Path) -> str:
        seen.append(slide.stem)
        if slide.stem == "s1":
            raise SlideError(f"{slide}: corrupt")  # bad input: recorded, the batch goes on
        write_json(out / f"{slide.stem}.json", {"slide": slide.stem})
        return slide.stem

    _inject(monkeypatch, errno.ENOSPC, after=1)  # s0 is written, s2 hits a full disk
    with pytest.raises(OutputError, match="no space left"):
        run_batch(slides, process, lambda s: out / f"{s.stem}.json")
    assert seen == ["s0", "s1", "s2"]  # s3 was not attempted: it could not be written either
    assert files_under(out) == ["s0.json"]  # no partial, no lock left behind
    monkeypatch.setattr(io_atomic, "_commit", os.replace)
    summary = run_batch(slides, process, lambda s: out / f"{s.stem}.json")
    assert [r.status for r in summary.records] == ["skipped", "failed", "done", "done"]


# --- every writing command: exit code 3 and one line --------------------------------------------------------------


def _cli_text(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    code, out, err = run_cli(monkeypatch, capsys, *args)
    return code, out + err


@pytest.fixture(scope="module")
def fault_slide(tmp_path_factory) -> Path:
    return write_small_slides(tmp_path_factory.mktemp("fault_slides"), (11,))[0]


@pytest.fixture(scope="module")
def feature_folder(tmp_path_factory) -> tuple[Path, Path]:
    from sammil_deploy.features.store import write_bag
    from sammil_deploy.mil.synthetic import synthetic_cohort

    bags, labels = synthetic_cohort(24, n_instances=20, dim=32, seed=1)
    root = tmp_path_factory.mktemp("fault_features")
    for bag in bags:
        write_bag(root / "features" / f"{bag.slide_id}.h5", bag)
    csv = root / "labels.csv"
    csv.write_text("slide_id,label\n" + "".join(f"{b.slide_id},{int(y)}\n" for b, y in zip(bags, labels, strict=True)))
    return root / "features", csv


def _command(name: str, out: Path, fx: dict) -> list[str]:
    slide = str(fx["slide"])
    return {
        "preprocess": ["preprocess", slide, "--out", str(out), "--preset", "bwh_biopsy"],
        "extract": ["extract", slide, "--out", str(out), "--preset", "bwh_biopsy", "--segmenter", "fallback",
                    "--encoder-weights", str(fx["weights"]), "--num-workers", "0"],
        "train": ["train", "--features", str(fx["features"][0]), "--labels", str(fx["features"][1]),
                  "--out", str(out), "--folds", "2", "--epochs", "1"],
        "export": ["export", "--out", str(out), "--checkpoint", str(fx["checkpoint"]), "--only", "mil"],
        "make-bundle": ["make-bundle", "--checkpoint", str(fx["checkpoint"]), "--out", str(out / "bundle"),
                        "--encoder-weights", str(fx["weights"]), "--preset", "bwh_biopsy", "--segmenter", "fallback"],
        "infer": ["infer", slide, "--bundle", str(fx["bundle"]), "--out", str(out), "--backend", "torch",
                  "--device", "cpu", "--num-workers", "0"],
        "benchmark": ["benchmark", "--only", "mil", "--out", str(out / "bench.json")],
    }[name]  # fmt: skip


COMMANDS = ["preprocess", "extract", "train", "export", "make-bundle", "infer", "benchmark"]


@pytest.fixture
def command_inputs(fault_slide, random_resnet_weights, feature_folder, random_torch_bundle) -> dict:
    checkpoint = next((random_torch_bundle / "mil").glob("*.safetensors"))
    return {"slide": fault_slide, "weights": random_resnet_weights, "checkpoint": checkpoint,
            "features": feature_folder, "bundle": random_torch_bundle}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_writing_command_on_a_read_only_folder(read_only, monkeypatch, capsys, command, command_inputs):
    code, text = _cli_text(monkeypatch, capsys, _command(command, read_only / "run", command_inputs))
    assert code == OUTPUT_ERROR_EXIT, text
    assert "Traceback" not in text
    assert "read-only file system" in text
    assert str(read_only) in text
    assert files_under(read_only) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_every_writing_command_on_a_full_disk(tmp_path, monkeypatch, capsys, command, command_inputs):
    _inject(monkeypatch, errno.ENOSPC)
    out = tmp_path / f"run_{uuid.uuid4().hex[:6]}"
    code, text = _cli_text(monkeypatch, capsys, _command(command, out, command_inputs))
    assert code == OUTPUT_ERROR_EXIT, text
    assert "Traceback" not in text
    assert "no space left" in text
    assert not [f for f in files_under(tmp_path) if f.endswith(".partial") or f.endswith(".lock")]


def test_infer_cohort_on_a_real_full_disk_stops_and_resumes(tmp_path, monkeypatch, capsys, command_inputs):
    """The issue's report: a small tmpfs (room for one slide's ~1.1 MB of outputs) under a two-slide cohort."""
    small = tmp_path / "disk"
    _mount_tmpfs(small, "4m")
    try:
        slides = tmp_path / "slides"
        slides.mkdir()
        for name in ("a", "b"):
            os.symlink(command_inputs["slide"], slides / f"{name}.svs")
        ballast = small / "ballast.bin"  # leaves ~1.6 MB: one slide's outputs fit, two do not
        ballast.write_bytes(b"\0" * (4 * 2**20 - 1600 * 2**10))
        args = ["infer", str(slides), "--bundle", str(command_inputs["bundle"]), "--out", str(small / "run"),
                "--backend", "torch", "--device", "cpu", "--num-workers", "0"]  # fmt: skip
        code, text = _cli_text(monkeypatch, capsys, args)
        assert code == OUTPUT_ERROR_EXIT, text
        assert "no space left" in text
        assert "Traceback" not in text
        assert not [f for f in files_under(small) if f.endswith((".partial", ".lock"))]
        assert sorted(p.name for p in (small / "run" / "reports").iterdir()) == ["a.json"]  # finished: kept
        ballast.unlink()
        code, text = _cli_text(monkeypatch, capsys, args)
        assert code == 0, text
        assert sorted(p.name for p in (small / "run" / "reports").iterdir()) == ["a.json", "b.json"]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_sammil_error_exit_code_is_still_one():
    assert SammilError("x").exit_code == 1
    assert OutputError("x").exit_code == OUTPUT_ERROR_EXIT
