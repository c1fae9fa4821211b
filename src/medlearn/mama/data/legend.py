"""The EMBED clinical legend: code -> meaning per column header (``massshape``, ``calcfind`` ...).

The published legend (``AWS_Open_Data_Clinical_Legend.csv`` in the EMBED open-data repository) is a
CSV with the header ``Header in export,Discription,Code,Meaning`` (sic), a UTF-8 byte-order mark,
codes and meanings padded with trailing spaces, and about 90 headers besides the four the reports
use. :func:`read_legend` reads it as it is (and the ``Description`` spelling, without BOM or
padding, that :func:`legend_table` writes). :data:`DEFAULT_LEGEND` is used when no legend file is
given; every code in it means what the published legend says (wording ours, lower case).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from medlearn.mama.data.csv_tables import read_csv_checked

log = logging.getLogger(__name__)

HEADER, DESCRIPTION, CODE, MEANING = "Header in export", "Description", "Code", "Meaning"
PUBLISHED_DESCRIPTION = "Discription"  # the published file's spelling
LEGEND_COLUMNS = (HEADER, DESCRIPTION, CODE, MEANING)
LEGEND_REQUIRED = (HEADER, CODE, MEANING)  # the description column is not used (either spelling)
REPORT_HEADERS = ("massshape", "massdens", "calcfind", "calcdistri")

# Codes of the published legend for the headers the reports use (plus the mass margin).
DEFAULT_LEGEND: dict[str, dict[str, str]] = {
    "massshape": {
        "G": "generic",
        "R": "round",
        "O": "oval",
        "X": "irregular",
        "Q": "questioned architectural distortion",
        "A": "architectural distortion",
        "T": "asymmetric tubular structure or solitary dilated duct",
        "N": "intramammary lymph node",
        "B": "global asymmetry",
        "F": "focal asymmetry",
        "S": "asymmetry",
        "V": "developing asymmetry",
        "Y": "lymph node",
    },
    "massmargin": {
        "D": "circumscribed",
        "U": "obscured",
        "M": "microlobulated",
        "I": "indistinct",
        "S": "spiculated",
    },
    "massdens": {"+": "high density", "=": "equal density", "-": "low density", "0": "fat containing"},
    "calcfind": {
        "A": "amorphous",
        "9": "benign",
        "H": "coarse heterogeneous",
        "C": "coarse popcorn-like",
        "D": "dystrophic",
        "E": "rim",
        "F": "fine linear",
        "B": "fine linear branching",
        "G": "generic",
        "I": "fine pleomorphic",
        "L": "large rod-like",
        "M": "milk of calcium",
        "J": "oil cyst",
        "K": "pleomorphic",
        "P": "punctate",
        "R": "round",
        "S": "skin",
        "O": "lucent-centered",
        "U": "suture",
        "V": "vascular",
        "Q": "coarse",
    },
    "calcdistri": {
        "G": "grouped",
        "S": "segmental",
        "R": "regional",
        "D": "diffuse",
        "L": "linear",
        "C": "clustered",
    },
}


def legend_table(legend: Mapping[str, Mapping[str, str]] | None = None) -> pd.DataFrame:
    """The legend dictionary as a plain legend table (columns ``LEGEND_COLUMNS``, no padding)."""
    legend = DEFAULT_LEGEND if legend is None else legend
    rows = [
        {HEADER: h, DESCRIPTION: h, CODE: c, MEANING: m}
        for h, codes in legend.items()
        for c, m in codes.items()
    ]
    return pd.DataFrame(rows, columns=list(LEGEND_COLUMNS))


def write_published_legend(
    path: str | Path,
    legend: Mapping[str, Mapping[str, str]] | None = None,
    extra_rows: Sequence[tuple[str, str, str, str]] = (),
    code_width: int = 10,
    meaning_width: int = 50,
) -> Path:
    """Write ``legend`` in the published file's format: BOM, ``Discription`` header, padded cells.

    Args:
        path: output CSV.
        legend: ``{header: {code: meaning}}`` (default :data:`DEFAULT_LEGEND`).
        extra_rows: further (header, description, code, meaning) rows, e.g. headers the reports
            do not use or rows without a code.
        code_width, meaning_width: codes and meanings are padded with trailing spaces to these widths.
    Returns:
        ``path``.
    """
    table = legend_table(legend)
    if extra_rows:
        table = pd.concat([table, pd.DataFrame(list(extra_rows), columns=list(LEGEND_COLUMNS))])
    table[CODE] = table[CODE].map(lambda c: c.ljust(code_width) if c else c)
    table[MEANING] = table[MEANING].map(lambda m: m.ljust(meaning_width) if m else m)
    table = table.rename(columns={DESCRIPTION: PUBLISHED_DESCRIPTION})
    path = Path(path)
    table.to_csv(path, index=False, encoding="utf-8-sig")
    return path


def read_legend(path: str | Path) -> dict[str, dict[str, str]]:
    """``{header: {code: meaning}}`` from an EMBED legend CSV, published or plain format.

    Column names, codes and meanings are stripped; rows without a code or meaning are skipped.

    Raises:
        DataError: file missing, unreadable, or without the columns ``LEGEND_REQUIRED``.
    """
    df = read_csv_checked(path, LEGEND_REQUIRED)
    out: dict[str, dict[str, str]] = {}
    for h, c, m in zip(df[HEADER], df[CODE], df[MEANING]):
        if isinstance(h, str) and isinstance(c, str) and isinstance(m, str) and c.strip() and m.strip():
            out.setdefault(h.strip(), {})[c.strip()] = m.strip()
    if not any(h in out for h in REPORT_HEADERS):
        log.warning(
            "%s: no codes for %s: reports will have no mass/calcification sentences", path, REPORT_HEADERS
        )
    return out
