"""Structured text reports built from EMBED tabular fields, and zero-shot prompts.

A report has 8 segments, each one sentence ending in "." (the text tower turns every "." and ";"
into its sentence-separator token, so field values are cleaned of both characters). As in the
reference, a plain report has 8 separators; the wording is ours:

1. ``Procedure reported: <StudyDescription>.``
2. ``Reason for procedure: screening|diagnostic.`` ("screen" in the description, else "diag")
3. ``Patient info: race <r>, ethnicity <e>, age <a>.``
4. ``Image info: <type> full-field digital mammogram, side <s>, view <v>.``
5. ``Breast composition: <density phrase>.`` (+ a sensitivity sentence for density C/D)
6. ``Findings: <assessment phrase>.`` (+ a mass sentence when both the shape and the density code
   have a legend meaning, + a calcification sentence when both morphology and distribution have one)
7. ``Impressions: BI-RADS Category <k>: <category name>.``
8. ``Overall Assessment: <category name>.``

Ethnicity is "Hispanic or Latino" or, for anything else including a missing value, "Non-Hispanic or
Latino" (the reference's rule).

Masking (training only): age, race, ethnicity, image type, side and view are each replaced by
"unknown" with probability ``mask_prob``, drawn afresh on every call. Everything that needs a
table or legend lookup is resolved once per row (:meth:`ReportBuilder.parts`), so building a
report per fetch is string formatting only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medlearn.mama.data.legend import DEFAULT_LEGEND
from medlearn.mama.data.tables import ASSES_TO_BIRADS, procedure_reason

UNKNOWN = "unknown"
BIRADS_NAMES = (
    "Incomplete - Need Additional Imaging Evaluation",
    "Negative",
    "Benign",
    "Probably Benign",
    "Suspicious",
    "Highly Suggestive of Malignancy",
    "Known Biopsy-Proven Malignancy",
)
FINDING_PHRASES = (
    "additional imaging evaluation is needed",
    "no significant findings",
    "benign findings",
    "probably benign findings, short-interval follow-up is suggested",
    "suspicious abnormality, biopsy should be considered",
    "highly suggestive of malignancy, biopsy is recommended",
    "known biopsy-proven malignancy",
)
# tissueden 1-4 (A-D) and 5 (normal male).
DENSITY_PHRASES = {
    1: "the breasts are almost entirely fatty",
    2: "there are scattered areas of fibroglandular density",
    3: "the breasts are heterogeneously dense, which could obscure small masses",
    4: "the breasts are extremely dense",
    5: "normal male breast",
}
DENSE_SENTENCE = "Dense tissue may lower the sensitivity of mammography."
VIEW_NAMES = {
    "CC": "craniocaudal",
    "MLO": "mediolateral oblique",
    "ML": "mediolateral",
    "LM": "lateromedial",
    "XCCL": "exaggerated craniocaudal lateral",
    "XCCM": "exaggerated craniocaudal medial",
}
SIDE_NAMES = {"L": "left", "R": "right", "B": "bilateral"}
HISPANIC = "hispanic or latino"
RSNA_PROMPTS = (
    "Findings: no significant findings; benign findings.",
    "Findings: suspicious abnormality; known biopsy-proven malignancy.",
)
_SEP = re.compile(r"[.;]")


def clean(value: Any) -> str:
    """Field value as text without "." or ";" (they are sentence boundaries); "" when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = _SEP.sub(" ", str(value))
    return " ".join(text.split())


def _codes(value: Any) -> list[str]:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    return [c for c in re.split(r"[,\s]+", text.strip()) if c]


@dataclass(frozen=True)
class ReportParts:
    """Per-row strings of a report; the six maskable fields are kept apart."""

    head: str  # segments 1-2
    race: str
    ethnicity: str
    age: str
    image_type: str
    side: str
    view: str
    tail: str  # segments 5-8


MASKABLE = ("race", "ethnicity", "age", "image_type", "side", "view")


def render(parts: ReportParts, masked: Mapping[str, bool] | None = None) -> str:
    """The report text; fields named True in ``masked`` read "unknown"."""
    masked = masked or {}

    def f(name: str) -> str:
        return UNKNOWN if masked.get(name, False) else getattr(parts, name)

    patient = f"Patient info: race {f('race')}, ethnicity {f('ethnicity')}, age {f('age')}."
    image = f"Image info: {f('image_type')} full-field digital mammogram, side {f('side')}, view {f('view')}."
    return " ".join(s for s in (parts.head, patient, image, parts.tail) if s)


def density_segment(tissueden: int) -> str:
    """Segment 5 for EMBED ``tissueden`` 1-5."""
    text = f"Breast composition: {DENSITY_PHRASES[tissueden]}."
    return f"{text} {DENSE_SENTENCE}" if tissueden in (3, 4) else text


def assessment_segments(birads: int, extra_findings: str = "") -> str:
    """Segments 6-8 for BI-RADS category ``birads`` (0-6), with optional mass/calcification sentences."""
    name = BIRADS_NAMES[birads]
    findings = f"Findings: {FINDING_PHRASES[birads]}."
    if extra_findings:
        findings = f"{findings} {extra_findings}"
    return f"{findings} Impressions: BI-RADS Category {birads}: {name}. Overall Assessment: {name}."


class ReportBuilder:
    """Builds per-image structured reports and zero-shot prompts from per-image table rows.

    Args:
        legend: ``{header: {code: meaning}}`` (``tables.read_legend``), or an EMBED legend table
            (columns ``Header in export``, ``Code``, ``Meaning``); ``None`` uses ``DEFAULT_LEGEND``.

    Example:
        >>> rb = ReportBuilder()
        >>> row = {"study_description": "MG Screening Bilateral", "asses": "N", "tissueden": 2,
        ...        "age": 61.0, "race": "White", "ethnicity": "Unknown", "laterality": "L", "view": "CC",
        ...        "image_type": "2D"}
        >>> rb.build(row).split(". ")[0]
        'Procedure reported: MG Screening Bilateral'
    """

    def __init__(self, legend: Mapping[str, Mapping[str, str]] | pd.DataFrame | None = None) -> None:
        if legend is None:
            legend = DEFAULT_LEGEND
        if isinstance(legend, pd.DataFrame):
            table = legend
            legend = {}
            for h, c, m in zip(table["Header in export"], table["Code"], table["Meaning"]):
                legend.setdefault(str(h).strip(), {})[str(c).strip()] = str(m).strip()
        self.legend = {h: {str(c): clean(m) for c, m in codes.items()} for h, codes in legend.items()}

    def _meanings(self, header: str, value: Any) -> str:
        codes = self.legend.get(header, {})
        return " and ".join(codes[c] for c in _codes(value) if c in codes)

    def finding_sentences(self, row: Mapping[str, Any]) -> str:
        """Mass and calcification sentences of ``row``; each needs both codes of its pair in the legend."""
        out = []
        shape, dens = (
            self._meanings("massshape", row.get("massshape")),
            self._meanings("massdens", row.get("massdens")),
        )
        if shape and dens:
            art = "an" if shape[:1].lower() in "aeiou" else "a"
            out.append(f"There is {art} {shape} mass of {dens}.")
        morph = self._meanings("calcfind", row.get("calcfind"))
        distri = self._meanings("calcdistri", row.get("calcdistri"))
        if morph and distri:
            out.append(f"There are {morph} calcifications in a {distri} distribution.")
        return " ".join(out)

    @staticmethod
    def _meta(row: Mapping[str, Any]) -> dict[str, str]:
        proc = clean(row.get("study_description"))
        reason = procedure_reason(proc)
        head = f"Procedure reported: {proc or UNKNOWN}. Reason for procedure: {reason or UNKNOWN}."
        age = row.get("age")
        try:
            age_f = float(age)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            age_f = float("nan")
        eth = clean(row.get("ethnicity"))
        eth = "Hispanic or Latino" if eth.lower() == HISPANIC else "Non-Hispanic or Latino"
        view = clean(row.get("view")).upper()
        return {
            "head": head,
            "race": clean(row.get("race")) or UNKNOWN,
            "ethnicity": eth,
            "age": str(int(age_f)) if math.isfinite(age_f) else UNKNOWN,
            "image_type": clean(row.get("image_type")) or UNKNOWN,
            "side": SIDE_NAMES.get(clean(row.get("laterality")).upper(), UNKNOWN),
            "view": VIEW_NAMES.get(view, view.lower() or UNKNOWN),
        }

    def parts(self, row: Mapping[str, Any]) -> ReportParts:
        """Resolve every lookup of ``row`` once (precompute this per row for fast fetches)."""
        meta = self._meta(row)
        tail = []
        dens = row.get("tissueden")
        try:
            dens_i = int(float(dens))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            dens_i = -1
        tail.append(
            density_segment(dens_i) if dens_i in DENSITY_PHRASES else f"Breast composition: {UNKNOWN}."
        )
        birads = ASSES_TO_BIRADS.get(clean(row.get("asses")).upper())
        if birads is None:
            tail.append(f"Findings: {UNKNOWN}.")
        else:
            tail.append(assessment_segments(birads, self.finding_sentences(row)))
        return ReportParts(tail=" ".join(tail), **meta)

    def render(
        self, parts: ReportParts, *, mask_prob: float = 0.0, rng: np.random.Generator | None = None
    ) -> str:
        """Report text from precomputed parts, each maskable field hidden with ``mask_prob``."""
        if mask_prob <= 0:
            return render(parts)
        rng = rng if rng is not None else np.random.default_rng()
        draws = rng.random(len(MASKABLE)) < mask_prob
        return render(parts, dict(zip(MASKABLE, draws.tolist())))

    def build(
        self, row: Mapping[str, Any], *, mask_prob: float = 0.0, rng: np.random.Generator | None = None
    ) -> str:
        """The report of one per-image table row (dict or pandas Series)."""
        return self.render(self.parts(row), mask_prob=mask_prob, rng=rng)

    def zero_shot_prompts(self, row: Mapping[str, Any], task: str) -> list[str]:
        """One prompt per class: the row's unmasked segments 1-4 + the class's tail.

        ``task="birads"`` gives 7 prompts (categories 0-6), ``task="density"`` 4 (A-D).
        """
        base = render(ReportParts(tail="", **self._meta(row)))
        if task == "birads":
            return [f"{base} {assessment_segments(k)}" for k in range(len(BIRADS_NAMES))]
        if task == "density":
            return [f"{base} {density_segment(k)}" for k in (1, 2, 3, 4)]
        raise ValueError(f"zero-shot task {task!r}: expected 'birads' or 'density'")
