"""Which layout a patient folder uses, the patients under a root, and reading/validating them.

``root`` is the folder holding one sub-folder per patient; a patient folder with ``Met_filtered/``
is in the ``npy`` layout (:mod:`medlearn.mrsi.data.npy`), one with ``concs/`` in the ``nifti``
layout (:mod:`medlearn.mrsi.data.nifti`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.data import nifti, npy
from medlearn.mrsi.data.patient import LAYOUTS, PatientData, _check_metabolites, _natural_key

log = logging.getLogger(__name__)


def detect_layout(patient_dir: Path) -> str:
    """``"npy"`` if ``Met_filtered/`` exists, ``"nifti"`` if ``concs/`` exists.

    Raises:
        DataError: if the folder is missing or has neither.
    """
    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise DataError(f"{patient_dir}: patient folder not found")
    if (patient_dir / npy.MAPS_DIR).is_dir():
        return "npy"
    if (patient_dir / nifti.MAPS_DIR).is_dir():
        return "nifti"
    raise DataError(
        f"{patient_dir}: cannot tell the layout: expected a '{npy.MAPS_DIR}/' folder (npy layout) "
        f"or a '{nifti.MAPS_DIR}/' folder (nifti layout)"
    )


def list_patients(root: str | Path, layout: str = "auto") -> list[str]:
    """Patient folder names under ``root`` in natural order (Patient2 before Patient10).

    Args:
        root: folder with one sub-folder per patient.
        layout: ``"npy"``, ``"nifti"`` or ``"auto"`` (either).
    Raises:
        DataError: if ``root`` is missing or holds no patient folder.
    """
    root = Path(root)
    if layout not in (*LAYOUTS, "auto"):
        raise ConfigError(f"layout must be one of {LAYOUTS + ('auto',)}, got {layout!r}")
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    by_layout = {"npy": npy.MAPS_DIR, "nifti": nifti.MAPS_DIR}
    markers = tuple(by_layout.values()) if layout == "auto" else (by_layout[layout],)
    found = [p.name for p in root.iterdir() if p.is_dir() and any((p / m).is_dir() for m in markers)]
    if not found:
        hint = [str(root / lay) for lay in LAYOUTS if (root / lay).is_dir()]
        raise DataError(
            f"{root}: no patient folders found for layout {layout!r} "
            f"(a patient folder holds {' or '.join(m + '/' for m in markers)})"
            + (f"; did you mean {' or '.join(hint)}?" if hint else "")
        )
    return sorted(found, key=_natural_key)


def load_patient(
    root: str | Path,
    patient_id: str,
    layout: str = "auto",
    metabolites: Sequence[str] = METABOLITES,
    conc_kind: str | None = None,
    check_geometry: bool = True,
) -> PatientData:
    """Read and validate one patient.

    Args:
        root: folder holding the patient folders.
        patient_id: the patient folder name.
        layout: ``"npy"``, ``"nifti"`` or ``"auto"`` (detected from the folder).
        metabolites: which maps to read (names of :data:`METABOLITES` or any file stem).
        conc_kind: nifti only: sub-folder of ``concs/`` to read (FSL-MRS writes ``raw``,
            ``internal``, ``molality``, ``molarity``); None reads ``concs/`` itself.
        check_geometry: nifti only: require identical map affines and an MRI affine that is the
            map grid subdivided 3x (see :func:`mri_affine_from_map_affine`).
    Returns:
        :class:`PatientData`.
    Raises:
        DataError: naming the file for a missing metabolite/MRI file, unreadable file, NaN/inf,
            maps of different shapes, MRI not 3x the map grid or not 3 sub-slices per slice,
            inconsistent affines.
        ConfigError: for an unknown layout or an empty/duplicated metabolite list.
    """
    _check_metabolites(metabolites)
    if layout not in (*LAYOUTS, "auto"):
        raise ConfigError(f"layout must be one of {LAYOUTS + ('auto',)}, got {layout!r}")
    pdir = Path(root) / patient_id
    found = detect_layout(pdir)
    if layout == "auto":
        layout = found
    if layout == "npy":
        return npy.load_npy_patient(pdir, metabolites)
    return nifti.load_nifti_patient(pdir, metabolites, conc_kind, check_geometry)


def verify_dataset(
    root: str | Path,
    layout: str = "auto",
    metabolites: Sequence[str] = METABOLITES,
    conc_kind: str | None = None,
    check_geometry: bool = True,
) -> dict[str, str | None]:
    """Check every patient under ``root`` before training (all problems at once, not the first).

    Returns:
        patient id -> None when it loads and shares the metabolite grid of the first valid
        patient, else the error message (which names the file).
    Raises:
        DataError: if ``root`` holds no patient folder.
    """
    report: dict[str, str | None] = {}
    grid: tuple[tuple[int, int], str] | None = None
    for pid in list_patients(root, layout):
        try:
            p = load_patient(root, pid, layout, metabolites, conc_kind, check_geometry)
        except DataError as exc:
            report[pid] = str(exc)
            continue
        if grid is None:
            grid = (p.grid, pid)
        report[pid] = (
            None if p.grid == grid[0] else f"{pid}: map grid {p.grid} differs from {grid[1]}'s {grid[0]}"
        )
    bad = sum(v is not None for v in report.values())
    if bad:
        log.warning("%d of %d patients under %s failed validation", bad, len(report), root)
    return report
