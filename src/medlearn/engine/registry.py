"""Components by name: a registry maps a name (as written in a YAML config) to a factory.

Tasks keep one registry per kind of component (MRSI generators and critics, ITL encoders,
strategies and losses) and build what a config names.  A name can be registered once; a lookup of
an unknown name raises :class:`~medlearn.errors.ConfigError` listing the registered names and the
registry's kind, so a typo in a config is reported at the boundary, not deep inside a loop.

Example:
    >>> BLOCKS: Registry[str] = Registry("toy block")
    >>> @BLOCKS.register("upper")
    ... def upper(text: str = "a") -> str:
    ...     return text.upper()
    >>> BLOCKS.add("twice", lambda text="a": text * 2)
    >>> BLOCKS.build("upper", text="dice"), BLOCKS.names()
    ('DICE', ['upper', 'twice'])
    >>> BLOCKS.build("lower")
    Traceback (most recent call last):
    ...
    medlearn.errors.ConfigError: unknown toy block 'lower'; registered: upper, twice
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from medlearn.errors import ConfigError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Name -> factory of ``T``, in registration order.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"MRSI generator"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def add(self, name: str, factory: Callable[..., T]) -> None:
        """Register ``factory`` under ``name``.

        Raises:
            ConfigError: if ``name`` is already registered (a second component would shadow the first).
        """
        if name in self._items:
            raise ConfigError(f"{self.kind} '{name}' is already registered")
        self._items[name] = factory

    def register(self, name: str | None = None) -> Callable[[F], F]:
        """Decorator form of :meth:`add`; ``name`` defaults to the function's or class's ``__name__``.

        The decorated object is returned unchanged.
        """

        def deco(factory: F) -> F:
            self.add(factory.__name__ if name is None else name, factory)
            return factory

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``.

        Raises:
            ConfigError: for an unknown name, listing the registered ones.
        """
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} '{name}'; registered: {', '.join(self._items)}") from None

    def build(self, name: str, **kwargs: Any) -> T:
        """Call the factory of ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
