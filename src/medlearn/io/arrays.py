"""Arrays handed in by Python callers (numpy or torch), checked once at the boundary."""

from __future__ import annotations

from typing import Any

import numpy as np

from medlearn.errors import DataError

__all__ = ["as_float_array"]


def as_float_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` (array-like or torch tensor) as a float32 numpy array with ``ndim`` dimensions.

    Raises:
        DataError: wrong number of dimensions, or values that are not finite numbers (the message
            names ``name``).

    Example:
        >>> as_float_array([[1, 2], [3, 4]], "image", 2).dtype
        dtype('float32')
    """
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise DataError(f"{name}: expected a {ndim}D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise DataError(f"{name}: values must be finite numbers")
    return arr.astype(np.float32, copy=False)
