"""Config plumbing: nested tables, unknown keys with hints, overrides, serialisation."""

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
