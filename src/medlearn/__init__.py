"""medlearn: data-efficient medical-imaging methods as tested, scalable pipelines.

Tasks: ``mama`` (mammography vision-language pre-training), ``mrsi`` (multi-scale MRSI
super-resolution with adjustable sharpness) and ``itl`` (incremental-transfer learning for
multi-site segmentation).  Importing the package has no side effects and imports no heavy library:
the Python API of :mod:`medlearn.api` (``medlearn.build_model``, ``medlearn.train``,
``medlearn.load_predictor``, ``medlearn.load_mrsi`` ...) is loaded on first attribute access.
``python -m medlearn`` is the ``medlearn`` command.
"""

from __future__ import annotations

from medlearn._meta import PUBLIC_API as _API
from medlearn._meta import __version__

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    """Lazy re-export of :mod:`medlearn.api` (torch is imported only when the API is used)."""
    if name in _API:
        from medlearn import api

        return getattr(api, name)
    raise AttributeError(f"module 'medlearn' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
