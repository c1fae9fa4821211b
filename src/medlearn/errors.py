"""Exception types raised at medlearn's boundaries (configs, files, data tables).

Every error names the offending key or file and says what is wrong, so a user never has to read a
traceback from deep inside a library.
"""

from __future__ import annotations


class MedlearnError(Exception):
    """Base class of every error medlearn raises on purpose."""


class ConfigError(MedlearnError, ValueError):
    """A configuration key is unknown, has the wrong type or is missing."""


class DataError(MedlearnError, ValueError):
    """An input file or table is missing, unreadable or inconsistent."""
