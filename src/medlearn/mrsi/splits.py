"""Patient-level k-fold splits (train / validation / test), seeded, written to and read from JSON.

The reference uses 5 folds of 9 train / 3 validation / 3 test patients out of 15.  Patients are
shuffled once with the seed; fold ``i`` tests on the ``i``-th block of ``n_test`` patients, so the
test sets of the k folds partition the patients when ``k * n_test`` equals the number of patients
(and are disjoint whenever it is at most that number; beyond it the blocks wrap around).  The
validation patients of a fold are the next ``n_val`` patients after its test block (cyclically),
and the remaining patients train.  A patient is never in two roles within one fold.

Example:
    >>> folds = kfold_patient_splits([f"Patient{i}" for i in range(1, 16)], k=5, seed=0)
    >>> [len(folds[0][r]) for r in ("train", "val", "test")]
    [9, 3, 3]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medlearn.errors import ConfigError, DataError

__all__ = ["kfold_patient_splits", "write_splits", "read_splits", "check_splits"]

_ROLES = ("train", "val", "test")


def kfold_patient_splits(
    patient_ids: Sequence[str], k: int = 5, n_val: int = 3, n_test: int = 3, seed: int = 0
) -> list[dict[str, list[str]]]:
    """k patient-level folds.

    Args:
        patient_ids: unique patient identifiers.
        k: number of folds (>= 1).
        n_val: validation patients per fold (>= 0).
        n_test: test patients per fold (>= 1).
        seed: shuffling seed.
    Returns:
        list of k dicts ``{"train": [...], "val": [...], "test": [...]}`` (ids sorted within a role).
    Raises:
        ConfigError: on duplicate ids, k < 1, n_test < 1, n_val < 0, or no patient left to train.
    """
    ids = [str(p) for p in patient_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({p for p in ids if ids.count(p) > 1})
        raise ConfigError(f"patient ids must be unique; duplicated: {dup}")
    if k < 1 or n_test < 1 or n_val < 0:
        raise ConfigError(f"need k >= 1, n_test >= 1, n_val >= 0; got k={k}, n_test={n_test}, n_val={n_val}")
    n = len(ids)
    if n_val + n_test >= n:
        raise ConfigError(
            f"{n} patients cannot give {n_test} test + {n_val} validation patients and at least one training patient"
        )
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    folds = []
    for f in range(k):
        start = f * n_test
        test = [order[(start + j) % n] for j in range(n_test)]
        val = [order[(start + n_test + j) % n] for j in range(n_val)]
        used = set(test) | set(val)
        train = [p for p in order if p not in used]
        folds.append({"train": sorted(train), "val": sorted(val), "test": sorted(test)})
    return folds


def check_splits(splits: Sequence[dict], source: str = "splits") -> None:
    """Validate fold structure: the three roles present, lists of strings, no patient in two roles.

    Raises:
        DataError: naming ``source`` and the problem.
    """
    if not isinstance(splits, (list, tuple)) or not splits:
        raise DataError(f"{source}: expected a non-empty list of folds")
    for i, fold in enumerate(splits):
        if not isinstance(fold, dict) or set(fold) != set(_ROLES):
            keys = sorted(fold) if isinstance(fold, dict) else type(fold).__name__
            raise DataError(f"{source}: fold {i} must have exactly the keys {list(_ROLES)}, got {keys}")
        seen: dict[str, str] = {}
        for role in _ROLES:
            if not isinstance(fold[role], list) or not all(isinstance(p, str) for p in fold[role]):
                raise DataError(f"{source}: fold {i} '{role}' must be a list of patient ids (strings)")
            for p in fold[role]:
                if p in seen:
                    raise DataError(f"{source}: fold {i}: patient {p!r} is in both '{seen[p]}' and '{role}'")
                seen[p] = role
        if not fold["train"]:
            raise DataError(f"{source}: fold {i} has no training patient")


def write_splits(path: str | Path, splits: Sequence[dict]) -> Path:
    """Write folds as JSON ``{"folds": [...]}`` (atomic replace). Returns the path."""
    check_splits(splits, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"folds": [dict(f) for f in splits]}, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_splits(path: str | Path) -> list[dict[str, list[str]]]:
    """Read folds written by :func:`write_splits` (also accepts a bare JSON list of folds).

    Raises:
        DataError: if the file is missing, not JSON, or the folds are malformed or leak patients.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: splits file not found")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    folds = obj.get("folds") if isinstance(obj, dict) else obj
    check_splits(folds, str(path))
    return [{r: list(f[r]) for r in _ROLES} for f in folds]
