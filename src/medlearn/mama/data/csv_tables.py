"""Reading a table as strings with one clear error: the shared CSV boundary of the EMBED/RSNA readers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from medlearn.errors import DataError


def validate_columns(df: pd.DataFrame, required: Iterable[str], source: str | Path) -> None:
    """Raise a DataError naming ``source`` and every required column it lacks."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {sorted(map(str, df.columns))[:40]}")


def read_csv_checked(path: str | Path, required: Iterable[str]) -> pd.DataFrame:
    """Read a CSV as strings (no type guessing) and validate its columns.

    A UTF-8 byte-order mark is skipped and column names are stripped of surrounding spaces.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, na_values=[""], low_memory=False, encoding="utf-8-sig"
        )
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    validate_columns(df, required, path)
    return df
