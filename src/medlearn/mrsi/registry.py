"""MRSI generators and critics by registered name (:class:`medlearn.engine.registry.Registry`).

Example:
    >>> net = build_generator("single_scale", base_width=2, depth=2)
    >>> type(net).__name__
    'MCUNet'
    >>> build_generator("mcunet_typo")
    Traceback (most recent call last):
    ...
    medlearn.errors.ConfigError: unknown MRSI generator 'mcunet_typo'; registered: mcm, fs_nm, fs_n, single_scale, hypernetwork, adaptive_modulation
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from medlearn.engine.registry import Registry
from medlearn.mrsi.baselines import ARCH_SWITCHES
from medlearn.mrsi.networks import Critic, MCUNet

__all__ = ["GENERATORS", "CRITICS", "build_generator", "build_critic"]


def _generator_factory(switches: dict[str, Any]) -> Callable[..., MCUNet]:
    def make(**overrides: Any) -> MCUNet:
        return MCUNet(**{**switches, **overrides})

    return make


def _make_generators() -> Registry[nn.Module]:
    reg: Registry[nn.Module] = Registry("MRSI generator")
    for name, switches in ARCH_SWITCHES.items():
        reg.add(name, _generator_factory(switches))
    return reg


GENERATORS = _make_generators()
CRITICS: Registry[nn.Module] = Registry("MRSI critic")
CRITICS.add("critic3d", Critic)


def build_generator(name: str, **kwargs: Any) -> nn.Module:
    """A generator of architecture ``name`` (see :mod:`medlearn.mrsi.baselines`) with size overrides."""
    return GENERATORS.build(name, **kwargs)


def build_critic(name: str = "critic3d", **kwargs: Any) -> nn.Module:
    """The WGAN critic (``critic3d``) sized for ``input_shape``."""
    return CRITICS.build(name, **kwargs)
