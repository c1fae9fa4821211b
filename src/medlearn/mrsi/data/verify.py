"""Check a whole MRSI dataset before training: every patient, the common grid and the fold split.

:func:`check_dataset` reads every patient with the training readers (files, shapes, NaN/inf,
geometry; see :func:`~medlearn.mrsi.data.layout.load_patient`), collects every problem instead of
stopping at the first, and checks the split (a k-fold draw, or ``data.splits_file`` whose patients
must all exist).  With ``cache_file``, a patient whose files (names, sizes, modification times) are
unchanged since it last passed is not read again; ``medlearn mrsi prepare`` keeps that cache in
``<data.root>/.mrsi_check.json`` and ``--check-only`` reads everything and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from medlearn.errors import DataError, MedlearnError
from medlearn.mrsi.data.layout import list_patients, load_patient

log = logging.getLogger(__name__)

__all__ = ["CHECK_CACHE", "check_dataset", "patient_fingerprint"]

CHECK_CACHE = ".mrsi_check.json"
_VERSION = 1


def patient_fingerprint(patient_dir: Path) -> str:
    """SHA-1 of the (relative path, size, mtime) of every file under ``patient_dir``."""
    h = hashlib.sha1()
    for p in sorted(patient_dir.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(patient_dir).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_cache(path: Path | None, options: dict[str, Any]) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is not a readable check cache; checking every patient", path)
        return {}
    if data.get("version") != _VERSION or data.get("options") != options:
        return {}
    return dict(data.get("patients", {}))


def _write_cache(path: Path, options: dict[str, Any], passed: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"version": _VERSION, "options": options, "patients": passed}, indent=1))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only dataset folder: the check stands, only the cache is lost
        log.warning("could not write the check cache %s (%s)", path, exc)


def _check_split(cfg: Any, ids: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The fold ``data.fold`` as training draws it (``splits_file``, else the seeded k-fold draw)."""
    from medlearn.mrsi.splits import kfold_patient_splits, read_splits

    d = cfg.data
    errors: dict[str, str] = {}
    try:
        if d.splits_file:
            folds = read_splits(d.splits_file)
        else:
            folds = kfold_patient_splits(ids, k=d.k_folds, n_val=d.n_val, n_test=d.n_test, seed=d.split_seed)
        if not 0 <= d.fold < len(folds):
            return {}, {"<split>": f"data.fold={d.fold} is outside 0..{len(folds) - 1}"}
        split = folds[d.fold]
    except MedlearnError as exc:
        return {}, {"<split>": str(exc)}
    named = {pid for part in split.values() for pid in part}
    unknown = sorted(named - set(ids))
    if unknown:
        errors["<split>"] = (
            f"{cfg.data.splits_file or 'the split'} names patients not found under {cfg.data.root}: "
            + ", ".join(unknown)
        )
    return split, errors


def check_dataset(cfg: Any, cache_file: str | Path | None = None) -> dict[str, Any]:
    """Validate every patient of ``cfg.data`` and the split of ``cfg.data.fold``.

    Args:
        cfg: an ``MRSIConfig`` (``data.root``, ``layout``, ``metabolites``, ``conc_kind``, split keys).
        cache_file: JSON of patients that passed before; unchanged ones are not read again, and
            the file is rewritten with this check's result.  None reads every patient.
    Returns:
        ``{"patients": [...], "errors": {pid or "<grid>"/"<split>": message}, "slices": int,
        "grids": [(H, W), ...], "split": {...}, "cached": int}``.  A bad patient never raises: all
        problems are collected.
    Raises:
        DataError: only when ``data.root`` is missing or holds no patient folder.
    """
    d = cfg.data
    root = Path(d.root)
    ids = list_patients(root, d.layout)
    options = {"layout": d.layout, "metabolites": list(d.metabolites), "conc_kind": d.conc_kind}
    cache_path = Path(cache_file) if cache_file is not None else None
    known = _read_cache(cache_path, options)
    errors: dict[str, str] = {}
    passed: dict[str, Any] = {}
    cached = 0
    for pid in ids:
        fp = patient_fingerprint(root / pid)
        hit = known.get(pid)
        if hit is not None and hit.get("fingerprint") == fp:
            passed[pid] = hit
            cached += 1
            continue
        try:
            p = load_patient(root, pid, d.layout, d.metabolites, d.conc_kind)
        except DataError as exc:
            errors[pid] = str(exc)
            continue
        passed[pid] = {"fingerprint": fp, "grid": list(p.grid), "slices": int(p.n_slices)}
    grids = sorted({tuple(v["grid"]) for v in passed.values()})
    if len(grids) > 1:
        by_grid = {g: [pid for pid, v in passed.items() if tuple(v["grid"]) == g] for g in grids}
        errors["<grid>"] = "patients have different map grids: " + "; ".join(
            f"{g}: {', '.join(p)}" for g, p in by_grid.items()
        )
    split, split_errors = _check_split(cfg, ids)
    errors.update(split_errors)
    if cache_path is not None:
        _write_cache(cache_path, options, passed)
    if cached:
        log.info("%d of %d patients unchanged since their last check (%s)", cached, len(ids), cache_path)
    return {
        "patients": ids,
        "errors": errors,
        "slices": sum(int(v["slices"]) for v in passed.values()),
        "grids": grids,
        "split": split,
        "cached": cached,
    }
