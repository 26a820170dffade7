"""A named registry of builders (encoders, segmenters): register by decorator, list, look up with a clear error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sammil_deploy.errors import ConfigError

B = TypeVar("B", bound=Callable[..., Any])


class Registry(Generic[B]):
    """Builders by name; ``what`` names the kind in errors (``"encoder"``, ``"segmenter"``)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._builders: dict[str, B] = {}

    def register(self, name: str) -> Callable[[B], B]:
        """Decorator adding ``builder`` under ``name`` (a dict insert, nothing else); a second ``name`` is refused."""

        def decorate(builder: B) -> B:
            if name in self._builders:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._builders[name] = builder
            return builder

        return decorate

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._builders)

    def get(self, name: str) -> B:
        """The builder registered as ``name``.

        Raises:
            ConfigError: Unknown name (the message lists the registered ones).
        """
        try:
            return self._builders[name]
        except KeyError:
            raise ConfigError(f"unknown {self.what} {name!r}; choose from {self.names()}") from None
