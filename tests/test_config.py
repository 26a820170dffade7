"""Config plumbing: nested tables, unknown keys with hints, overrides, serialisation."""

import re
from dataclasses import dataclass, field

import pytest

from sammil_deploy.config import apply_overrides, from_mapping, read_toml, to_dict
from sammil_deploy.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    size_px: int = 512
    names: tuple[str, ...] = ("a",)

    def __post_init__(self) -> None:
        if self.size_px <= 0:
            raise ConfigError(f"inner.size_px must be > 0, got {self.size_px}")


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    rate: float = 0.5


def test_nested_mapping_and_lists():
    cfg = from_mapping(Outer, {"inner": {"size_px": 256, "names": ["x", "y"]}, "rate": 1.0})
    assert cfg == Outer(Inner(256, ("x", "y")), 1.0)
    assert to_dict(cfg) == {"inner": {"size_px": 256, "names": ["x", "y"]}, "rate": 1.0}


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.size_pz'; did you mean 'size_px'"):
        from_mapping(Outer, {"inner": {"size_pz": 3}})


def test_validation_and_overrides():
    with pytest.raises(ConfigError, match="size_px must be > 0"):
        from_mapping(Outer, {"inner": {"size_px": 0}})
    cfg = apply_overrides(Outer(), {"inner.size_px": 128, "rate": None})
    assert cfg.inner.size_px == 128
    assert cfg.rate == 0.5
    with pytest.raises(ConfigError, match="unknown config key 'inner.nope'"):
        apply_overrides(Outer(), {"inner.nope": 1})


def test_read_toml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("x = [")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        read_toml(tmp_path / "none.toml")


def test_load_config_layers_and_tables(tmp_path):
    from sammil_deploy.config import load_config

    path = tmp_path / "outer.toml"
    path.write_text("[outer]\nrate = 2.0\n[outer.inner]\nsize_px = 64\n")
    cfg = load_config(Outer, path, table="outer", overrides={"inner.size_px": 32, "rate": None})
    assert cfg == Outer(Inner(32, ("a",)), 2.0)  # defaults < file < overrides (None skipped)
    assert load_config(Outer, None, overrides={"rate": 3.0}) == Outer(rate=3.0)
    assert load_config(Outer, None, prepare=lambda data: {**data, "rate": 4.0}).rate == 4.0  # runs without a file


def test_load_config_errors_name_the_file_the_key_and_the_fix(tmp_path):
    from sammil_deploy.config import load_config

    path = tmp_path / "typo.toml"
    path.write_text("[inner]\nsize_pz = 3\n")
    with pytest.raises(ConfigError, match=r"typo\.toml: unknown config key 'inner\.size_pz'; did you mean 'size_px'"):
        load_config(Outer, path)
    path.write_text("[inner]\nsize_px = 0\n")
    with pytest.raises(ConfigError, match=r"typo\.toml: inner\.size_px must be > 0"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match=r"typo\.toml: no \[outer\] table; see the example"):
        load_config(Outer, path, table="outer", table_hint="see the example")
    with pytest.raises(ConfigError, match=r"unknown config key 'inner\.size_pc'; did you mean 'size_px'"):
        load_config(Outer, None, overrides={"inner.size_pc": 1})


def test_stage_loaders_share_the_error_style(tmp_path):
    from sammil_deploy.bench.suites import load_suite
    from sammil_deploy.export.config import load_export_config
    from sammil_deploy.mil.config import load_recipe
    from sammil_deploy.pipeline.extract import load_extract_config
    from sammil_deploy.pipeline.infer import load_infer_config

    cases = {
        "infer.toml": ("[infer]\nbatch_sise = 4\n", load_infer_config, "'infer.batch_sise'; did you mean 'batch_size'"),
        "recipe.toml": ("[train]\nepoch = 4\n", load_recipe, "'train.epoch'; did you mean 'epochs'"),
        "extract.toml": ("[features]\nbatchsize = 4\n", load_extract_config, "'features.batchsize'; did you mean"),
        "build.toml": ("[export]\nopsett = 17\n", load_export_config, "'export.opsett'; did you mean 'opset'"),
        "suite.toml": ("devise = 'cpu'\n", load_suite, "'devise'; did you mean 'device'"),
    }
    for name, (text, loader, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: unknown config key {message}"):
            loader(path)
