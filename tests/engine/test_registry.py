"""Registry: decorator and plain registration, duplicate refusal, unknown-name message, build kwargs."""

from __future__ import annotations

import pytest

from medlearn.engine import Registry
from medlearn.errors import ConfigError


def test_register_decorator_and_add_build_in_order():
    reg: Registry[tuple] = Registry("widget")

    @reg.register("pair")
    def make_pair(a: int = 1, b: int = 2) -> tuple:
        return (a, b)

    @reg.register()
    class Triple(tuple):
        def __new__(cls, a: int = 0) -> Triple:
            return super().__new__(cls, (a, a, a))

    reg.add("single", lambda a=5: (a,))
    assert make_pair(3) == (3, 2)  # the decorator returns the function unchanged
    assert reg.names() == ["pair", "Triple", "single"]
    assert list(reg) == reg.names() and len(reg) == 3
    assert "pair" in reg and "quad" not in reg
    assert reg.build("pair", b=7) == (1, 7)
    assert reg.build("Triple", a=2) == (2, 2, 2)
    assert reg.build("single") == (5,)
    assert reg.get("pair") is make_pair


def test_duplicate_name_is_refused_and_first_entry_kept():
    reg: Registry[int] = Registry("widget")
    reg.add("one", lambda: 1)
    with pytest.raises(ConfigError, match="widget 'one' is already registered"):
        reg.add("one", lambda: 2)
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("one")(lambda: 3)
    assert reg.build("one") == 1


def test_unknown_name_lists_kind_and_registered_names():
    reg: Registry[int] = Registry("ITL strategy")
    reg.add("replay", lambda: 1)
    reg.add("lwf", lambda: 2)
    with pytest.raises(ConfigError) as err:
        reg.build("replya")
    assert str(err.value) == "unknown ITL strategy 'replya'; registered: replay, lwf"
    with pytest.raises(ConfigError, match="unknown ITL strategy 'x'"):
        reg.get("x")
