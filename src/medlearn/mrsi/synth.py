"""Synthetic MRSI benchmark from real anatomy (the MNI ICBM152 2009a templates in nilearn's wheel; no download).

:func:`synthesize` simulates ``n_patients`` high-grade glioma "patients" (see
:mod:`medlearn.mrsi.synth_phantom`) and writes both on-disk layouts read by
:func:`medlearn.mrsi.data.load_patient`::

    <out>/npy/Patient<k>/Met_filtered/<met>.npy          (S, H, W)
    <out>/npy/Patient<k>/MRI_sliced/{T1,flair}_sliced.npy (3S, 3H, 3W)
    <out>/npy/Patient<k>/lesion_label.npy                 (S, H, W) uint8 (extra; not in the reference)
    <out>/nifti/Patient<k>/concs/<met>.nii.gz             (H, W, S)  MRSI affine
    <out>/nifti/Patient<k>/{T1,FLAIR}.nii.gz               (3H, 3W, 3S) the map grid subdivided 3x
    <out>/nifti/Patient<k>/{quality_mask,lesion_label}.nii.gz (H, W, S) uint8
    <out>/README.md, <out>/synth.json                      what was simulated

Deterministic per seed: patient k uses ``numpy.random.default_rng([seed, k])``, so the result
does not depend on ``workers``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.synth_phantom import (
    CONCENTRATIONS,
    NECROSIS_FRACTION,
    NOISE_RELATIVE,
    OEDEMA_FACTOR,
    TUMOUR,
    Templates,
    simulate_patient,
)

__all__ = ["synthesize", "load_templates", "FOV_MM"]

log = logging.getLogger(__name__)

FOV_MM = 220.0
_LAYOUTS = ("npy", "nifti")


_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _template_dir() -> Path | None:
    """nilearn's bundled data folder, found without importing nilearn (its import takes seconds)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "datasets" / "data"
    return folder if all((folder / f).is_file() for f in _TEMPLATE_FILES.values()) else None


def load_templates() -> Templates:
    """MNI ICBM152 2009 T1, GM and WM (1 mm) shipped in nilearn's wheel, float32 in [0, 1].

    The brain mask is the non-zero support of the (skull-stripped) T1 template.  The files are read
    directly from nilearn's package data; if a nilearn release moves them, nilearn's own loaders
    are used instead.

    Raises:
        DataError: if nilearn (extra ``synth``) is not installed.
    """
    import nibabel as nib

    folder = _template_dir()
    if folder is not None:
        imgs = {k: nib.load(str(folder / f)) for k, f in _TEMPLATE_FILES.items()}
    else:
        try:
            from nilearn import datasets
        except ImportError as exc:
            raise DataError(
                "the synthetic MRSI benchmark needs nilearn, in the extra 'synth' (pip install 'medlearn[synth]')"
            ) from exc
        log.info("nilearn template files not found in the package folder; using nilearn.datasets loaders")
        imgs = {
            "t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1),
        }
    vols = {}
    for key, img in imgs.items():
        vol = np.asarray(img.dataobj, dtype=np.float32)
        vols[key] = np.clip(vol / max(float(vol.max()), 1e-6), 0.0, 1.0)
    brain = (vols["t1"] > 0).astype(np.float32)
    return Templates(
        vols["t1"], vols["gm"], vols["wm"], brain, np.asarray(imgs["t1"].affine, float), resolution=1
    )


def _default_slices(hr_size: int) -> int:
    """About 34 mm of slab: 10 slices of 3.44 mm at 64 px, 5 at 32 px."""
    return max(2, round(34.4 / (FOV_MM / hr_size)))


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _write_patient(out: Path, pid: str, sim: dict, layouts: Sequence[str]) -> None:
    if "npy" in layouts:
        pdir = out / "npy" / pid
        (pdir / "Met_filtered").mkdir(parents=True, exist_ok=True)
        (pdir / "MRI_sliced").mkdir(parents=True, exist_ok=True)
        for met, arr in sim["maps"].items():
            np.save(pdir / "Met_filtered" / f"{met}.npy", np.ascontiguousarray(arr.transpose(2, 0, 1)))
        for key, name in (("t1", "T1_sliced.npy"), ("flair", "flair_sliced.npy")):
            np.save(pdir / "MRI_sliced" / name, np.ascontiguousarray(sim[key].transpose(2, 0, 1)))
        np.save(pdir / "lesion_label.npy", np.ascontiguousarray(sim["lesion_label"].transpose(2, 0, 1)))
    if "nifti" in layouts:
        pdir = out / "nifti" / pid
        (pdir / "concs").mkdir(parents=True, exist_ok=True)
        for met, arr in sim["maps"].items():
            _save_nifti(pdir / "concs" / f"{met}.nii.gz", arr, sim["map_affine"])
        _save_nifti(pdir / "T1.nii.gz", sim["t1"], sim["mri_affine"])
        _save_nifti(pdir / "FLAIR.nii.gz", sim["flair"], sim["mri_affine"])
        _save_nifti(pdir / "quality_mask.nii.gz", sim["quality_mask"].astype(np.uint8), sim["map_affine"])
        _save_nifti(pdir / "lesion_label.nii.gz", sim["lesion_label"], sim["map_affine"])


def _run_chunk(
    out: str,
    ks: list[int],
    seed: int,
    hr_size: int,
    mri_factor: int,
    n_slices: int | None,
    resolution: int,
    layouts,
) -> list[dict]:
    """Simulate and write patients ``ks`` (runs in a worker process or inline)."""
    tpl = load_templates()
    meta = []
    for k in ks:
        rng = np.random.default_rng([int(seed), int(k)])
        slices = n_slices if n_slices is not None else _default_slices(hr_size) + int(rng.integers(-1, 2))
        sim = simulate_patient(
            tpl, rng, hr_size=hr_size, n_slices=slices, mri_factor=mri_factor, fov_mm=FOV_MM
        )
        pid = f"Patient{k}"
        _write_patient(Path(out), pid, sim, layouts)
        meta.append({"patient_id": pid, **sim["params"]})
    return meta


def _readme(info: dict) -> str:
    rows = "\n".join(
        f"| {m} | {CONCENTRATIONS[m][0]} | {CONCENTRATIONS[m][1]} | {CONCENTRATIONS[m][2]} | {TUMOUR[m]} "
        f"| {OEDEMA_FACTOR[m]} | {NOISE_RELATIVE[m]} |"
        for m in METABOLITES
    )
    return f"""# Synthetic MRSI benchmark (medlearn)

Simulated data, not patient data. Anatomy: nilearn's MNI152 2009 templates
({info["template_resolution_mm"]} mm), one warped axial slab per synthetic patient, each with a
simulated high-grade glioma. Seed {info["seed"]}, {info["n_patients"]} patients, MRSI grid
{info["hr_size"]}x{info["hr_size"]} ({info["map_voxel_mm"]:.4g} mm isotropic voxels, FOV {FOV_MM:g} mm),
MRI grid {info["mri_factor"]}x finer in-plane with {info["mri_factor"]} sub-slices per MRSI slice.

Layouts: `npy/` (reference tree: `Patient<k>/Met_filtered/<met>.npy`, `MRI_sliced/*_sliced.npy`) and
`nifti/` (`Patient<k>/concs/<met>.nii.gz`, `T1.nii.gz`, `FLAIR.nii.gz`, `quality_mask.nii.gz`,
`lesion_label.nii.gz` with 0 none, 1 oedema, 2 enhancing tumour, 3 necrosis). Both hold the same values.
Voxels failing the simulated quality control are 0 in every map.

Concentrations (mM; GM, WM, CSF, enhancing tumour at severity 1, oedema factor, noise SD relative
to the GM/WM mean); the necrotic core holds {NECROSIS_FRACTION:g} x the WM value of every metabolite:

| metabolite | GM | WM | CSF | tumour | oedema x | noise |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

Per-patient parameters (slab, flip, rotation, deformation, lesion position/size/severity, quality
control failures, noise) are in `synth.json`. Sources and the full description: docs/mrsi_data.md.
"""


def _clear_previous(out: Path) -> None:
    """Remove the layout folders of an earlier run so no stale patient survives a smaller rerun.

    Raises:
        ConfigError: if ``out`` holds ``npy/`` or ``nifti/`` folders without a ``synth.json``
            (not written by this generator: nothing is deleted).
    """
    existing = [out / lay for lay in _LAYOUTS if (out / lay).exists()]
    if not existing:
        return
    if not (out / "synth.json").is_file():
        raise ConfigError(
            f"{out}: holds {', '.join(p.name + '/' for p in existing)} but no synth.json; refusing to overwrite "
            "data this generator did not write (choose an empty or new folder)"
        )
    for folder in existing:
        log.info("removing the previous synthetic benchmark folder %s", folder)
        shutil.rmtree(folder)


def synthesize(
    out_dir: str | Path,
    n_patients: int = 15,
    seed: int = 0,
    hr_size: int = 64,
    mri_factor: int = 3,
    n_slices: int | None = None,
    workers: int = 1,
    layouts: Sequence[str] = _LAYOUTS,
) -> Path:
    """Write a synthetic MRSI benchmark to ``out_dir`` and return it.

    Args:
        out_dir: output folder (created; the ``npy/`` and ``nifti/`` folders of an earlier synthetic
            run there are replaced, other data is never deleted).
        n_patients: number of patients, named Patient1 .. Patient<n>.
        seed: master seed; the output is a deterministic function of the arguments.
        hr_size: H = W of the metabolite grid (64 as the paper, 32 for tests); voxels are
            FOV/hr_size mm, FOV 220 mm.
        mri_factor: MRI voxels per MRSI voxel per axis (3 as the paper; the loaders expect 3).
        n_slices: MRSI slices per patient; None draws about 34 mm of slab (+-1 slice) per patient.
        workers: processes (each loads the templates once).
        layouts: any of ``"npy"``, ``"nifti"``.
    Raises:
        ConfigError: on invalid arguments.
    """
    layouts = tuple(layouts)
    if not layouts or any(lay not in _LAYOUTS for lay in layouts):
        raise ConfigError(f"layouts must be a non-empty subset of {_LAYOUTS}, got {layouts}")
    if n_patients < 1 or hr_size < 8 or mri_factor < 1 or workers < 1:
        raise ConfigError(
            f"need n_patients >= 1, hr_size >= 8, mri_factor >= 1, workers >= 1; got {n_patients}, "
            f"{hr_size}, {mri_factor}, {workers}"
        )
    if n_slices is not None and n_slices < 1:
        raise ConfigError(f"n_slices must be >= 1 or None, got {n_slices}")
    out = Path(out_dir)
    _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    resolution = 1
    ks = list(range(1, n_patients + 1))
    args = (str(out), seed, hr_size, mri_factor, n_slices, resolution, layouts)
    workers = min(workers, n_patients, os.cpu_count() or 1)
    if workers == 1:
        meta = _run_chunk(args[0], ks, *args[1:])
    else:
        chunks = [ks[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(
                pool.map(_run_chunk, [args[0]] * workers, chunks, *[[a] * workers for a in args[1:]])
            )
        meta = sorted((m for part in parts for m in part), key=lambda m: int(m["patient_id"][7:]))
    info = {
        "generator": "medlearn.mrsi.synth",
        "seed": int(seed),
        "n_patients": int(n_patients),
        "hr_size": int(hr_size),
        "mri_factor": int(mri_factor),
        "fov_mm": FOV_MM,
        "map_voxel_mm": FOV_MM / hr_size,
        "template": "MNI ICBM152 2009a symmetric (nilearn bundled): T1, GM, WM; brain = T1 support",
        "template_resolution_mm": resolution,
        "layouts": list(layouts),
        "metabolites": list(METABOLITES),
        "units": "mM (simulated)",
        "concentrations_mM": {m: dict(zip(("GM", "WM", "CSF"), CONCENTRATIONS[m])) for m in METABOLITES},
        "tumour_mM": dict(TUMOUR),
        "necrosis_fraction_of_wm": NECROSIS_FRACTION,
        "oedema_factor": dict(OEDEMA_FACTOR),
        "noise_relative_sd": dict(NOISE_RELATIVE),
        "lesion_label_values": {"0": "none", "1": "oedema", "2": "enhancing tumour", "3": "necrosis"},
        "patients": meta,
    }
    (out / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(_readme(info))
    log.info("wrote %d synthetic MRSI patients to %s", n_patients, out)
    return out
