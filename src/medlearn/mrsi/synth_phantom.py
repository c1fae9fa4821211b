"""One synthetic glioma patient from real MNI152 anatomy: tissue, lesion, metabolite maps, T1, FLAIR.

Pure numpy/scipy on arrays handed in (no file access): :func:`simulate_patient` samples the
template's T1 and grey/white-matter probabilities on a per-patient warped grid, adds a simulated
high-grade glioma (necrotic core, enhancing rim, oedema), mixes literature-plausible tissue
concentrations into metabolite maps on the MRSI grid, and builds T1 and FLAIR-like contrasts on the
3x finer MRI grid.  ``docs/mrsi_data.md`` lists the values and their sources.

Grids: MRSI (H, W, S) with voxel ``v`` mm in-plane and ``t`` mm thick; MRI (fH, fW, fS), every
MRSI voxel split into f x f x f MRI voxels (f = 3), centres aligned as in
:func:`medlearn.mrsi.data.mri_affine_from_map_affine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.data import mri_affine_from_map_affine

__all__ = [
    "Templates",
    "CONCENTRATIONS",
    "TUMOUR",
    "NECROSIS_FRACTION",
    "OEDEMA_FACTOR",
    "NOISE_RELATIVE",
    "simulate_patient",
    "map_affine",
]

# Tissue concentrations in mM (grey matter, white matter, CSF); rounded literature values, see docs.
CONCENTRATIONS: dict[str, tuple[float, float, float]] = {
    "tCr": (8.0, 5.5, 0.0),
    "Gln": (3.0, 2.0, 0.0),
    "Glu": (10.0, 6.5, 0.0),
    "Gly": (0.7, 0.6, 0.0),
    "tCho": (1.4, 1.9, 0.0),
    "Ins": (6.0, 5.0, 0.0),
    "NAA": (10.0, 9.0, 0.0),
}
# Enhancing (solid) high-grade glioma tissue in mM, reached at severity 1 (interpolated from WM).
TUMOUR: dict[str, float] = {
    "tCr": 4.5,
    "Gln": 5.0,
    "Glu": 5.0,
    "Gly": 2.5,
    "tCho": 3.5,
    "Ins": 6.5,
    "NAA": 2.0,
}
NECROSIS_FRACTION = 0.15  # necrotic core: every metabolite at this fraction of its WM value
# Multiplicative change of normal tissue concentrations inside peritumoral oedema (infiltration).
OEDEMA_FACTOR: dict[str, float] = {
    "tCr": 0.9,
    "Gln": 1.1,
    "Glu": 0.85,
    "Gly": 1.2,
    "tCho": 1.1,
    "Ins": 1.15,
    "NAA": 0.75,
}
# Measurement noise SD as a fraction of the mean GM/WM concentration (low-concentration
# metabolites are fitted less precisely, as their Cramer-Rao bounds show).
NOISE_RELATIVE: dict[str, float] = {
    "tCr": 0.04,
    "Gln": 0.12,
    "Glu": 0.06,
    "Gly": 0.20,
    "tCho": 0.06,
    "Ins": 0.06,
    "NAA": 0.04,
}


@dataclass
class Templates:
    """MNI152 volumes (X, Y, Z) float32 in [0, 1] on one grid with its voxel-to-MNI-mm affine."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    resolution: int


def map_affine(hr_size: int, n_slices: int, fov_mm: float, centre_mm: np.ndarray) -> np.ndarray:
    """(4, 4) affine of the MRSI grid, world = MNI/RAS mm.

    Axes: i (H, rows) anterior -> posterior, j (W, columns) along +x (patient left -> right, so
    images display in neurological orientation), k (S) inferior -> superior; isotropic voxels of
    ``fov_mm / hr_size`` mm; the grid centre at ``centre_mm``.
    """
    v = fov_mm / hr_size
    a = np.zeros((4, 4))
    a[:3, :3] = [[0.0, v, 0.0], [-v, 0.0, 0.0], [0.0, 0.0, v]]
    a[3, 3] = 1.0
    mid = np.array([(hr_size - 1) / 2, (hr_size - 1) / 2, (n_slices - 1) / 2])
    a[:3, 3] = np.asarray(centre_mm, dtype=float) - a[:3, :3] @ mid
    return a


def _smoothstep(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step 0 -> 1 around x = 0 (logistic of x / width)."""
    return 1.0 / (1.0 + np.exp(-np.clip(x / width, -40, 40)))


def _random_waves(rng: np.random.Generator, n_terms: int, wavelength_mm: tuple[float, float]) -> list[tuple]:
    """Parameters of a smooth random field: (wave vector (3,), phase, amplitude-weight) per term."""
    waves = []
    for _ in range(n_terms):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(*wavelength_mm)
        waves.append((direction * k, rng.uniform(0, 2 * np.pi), rng.normal()))
    return waves


def _eval_waves(waves: list[tuple], pts: np.ndarray) -> np.ndarray:
    """Sum of cosines at points (..., 3) mm, normalised to unit RMS amplitude."""
    out = np.zeros(pts.shape[:-1], dtype=np.float32)
    for kvec, phase, amp in waves:
        out += np.float32(amp) * np.cos(pts @ kvec.astype(np.float32) + np.float32(phase))
    norm = np.sqrt(sum(a * a for _, _, a in waves) / 2) or 1.0
    return out / np.float32(norm)


def _sample(vol: np.ndarray, vox: np.ndarray) -> np.ndarray:
    """Trilinear sample of vol at voxel coordinates vox (3, N); 0 outside."""
    return ndimage.map_coordinates(vol, vox, order=1, mode="constant", cval=0.0).astype(np.float32)


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """(fH, fW, fS) -> (H, W, S) mean over f x f x f blocks."""
    h, w, s = (d // f for d in x.shape)
    return x.reshape(h, f, w, f, s, f).mean(axis=(1, 3, 5))


def simulate_patient(
    tpl: Templates,
    rng: np.random.Generator,
    hr_size: int = 64,
    n_slices: int = 10,
    mri_factor: int = 3,
    fov_mm: float = 220.0,
) -> dict:
    """Simulate one patient.

    Args:
        tpl: MNI152 templates.
        rng: the patient's random generator (all randomness comes from it).
        hr_size: H = W of the MRSI grid.
        n_slices: S, MRSI slices.
        mri_factor: f, MRI voxels per MRSI voxel along each axis.
        fov_mm: in-plane field of view.
    Returns:
        dict with ``maps`` {met: (H, W, S) float32 mM, 0 where QC failed}, ``t1``/``flair``
        (fH, fW, fS) float32, ``quality_mask`` (H, W, S) bool, ``lesion_label`` (H, W, S) uint8
        (0 none, 1 oedema, 2 enhancing tumour, 3 necrosis; the largest lesion fraction >= 0.3),
        ``map_affine``/``mri_affine`` (4, 4), and ``params`` (JSON-able description).
    """
    f = mri_factor
    # -- geometry: slab position and per-patient warp (output world mm -> template MNI mm)
    z_centre = float(rng.uniform(0.0, 30.0))
    centre = np.array([0.0, -18.0, z_centre])
    aff = map_affine(hr_size, n_slices, fov_mm, centre)
    aff_mri = mri_affine_from_map_affine(aff, f)
    flip = bool(rng.integers(0, 2))
    angle = float(rng.uniform(-8.0, 8.0))
    scale = float(rng.uniform(0.92, 1.08))
    shift = rng.uniform(-4.0, 4.0, size=2)
    elastic_mm = float(rng.uniform(1.5, 3.0))
    shape = (f * hr_size, f * hr_size, f * n_slices)
    idx = np.stack(np.meshgrid(*(np.arange(d, dtype=np.float32) for d in shape), indexing="ij"), axis=-1)
    pts = idx @ aff_mri[:3, :3].T.astype(np.float32) + aff_mri[:3, 3].astype(np.float32)  # (fH, fW, fS, 3)
    theta = np.deg2rad(angle)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    lin = np.diag([-1.0 if flip else 1.0, 1.0, 1.0]) @ rot / scale
    src = (pts - centre.astype(np.float32)) @ lin.T.astype(np.float32)
    src += (centre + np.array([shift[0], shift[1], 0.0])).astype(np.float32)
    for axis in range(3):
        src[..., axis] += elastic_mm * _eval_waves(_random_waves(rng, 4, (40.0, 90.0)), pts)
    inv = np.linalg.inv(tpl.affine)
    flat = src.reshape(-1, 3)
    vox = np.stack([flat @ inv[a, :3].astype(np.float32) + np.float32(inv[a, 3]) for a in range(3)])  # (3, N)
    t1 = _sample(tpl.t1, vox).reshape(shape)
    gm = _sample(tpl.gm, vox).reshape(shape)
    wm = _sample(tpl.wm, vox).reshape(shape)
    brain = _sample(tpl.brain, vox).reshape(shape)
    total = np.clip(np.maximum(brain, gm + wm), 0.0, 1.0)
    over = np.maximum(gm + wm, 1e-6)
    gm, wm = (np.where(gm + wm > total, x * total / over, x) for x in (gm, wm))
    csf = np.clip(total - gm - wm, 0.0, 1.0)

    # -- lesion: centre in white matter of the central sub-slices
    zc = slice(shape[2] // 3, max(shape[2] // 3 + 1, 2 * shape[2] // 3))
    cand = np.argwhere(wm[:, :, zc] > 0.6)
    if len(cand) == 0:
        cand = np.argwhere(total[:, :, zc] > 0.5)
    if len(cand) == 0:
        cand = np.argwhere(np.ones_like(total[:, :, zc], dtype=bool))
    c_idx = cand[rng.integers(0, len(cand))] + np.array([0, 0, zc.start])
    c_mm = pts[tuple(c_idx)]
    radius = float(rng.uniform(10.0, 20.0))
    core = float(rng.uniform(0.25, 0.6)) if rng.random() < 0.85 else 0.0
    oedema = float(rng.uniform(1.5, 2.3))
    axes = [float(a) for a in rng.uniform(0.8, 1.2, size=3)]
    phi0 = float(rng.uniform(0, np.pi))
    severity = float(rng.uniform(0.6, 1.0))
    ins_factor = float(rng.uniform(0.6, 1.4))
    harm = [float(a) for a in rng.uniform(0, 2 * np.pi, size=2)]
    d = pts - c_mm.astype(np.float32)
    cp, sp = float(np.cos(phi0)), float(np.sin(phi0))
    qx = (cp * d[..., 0] + sp * d[..., 1]) / axes[0]
    qy = (-sp * d[..., 0] + cp * d[..., 1]) / axes[1]
    qz = d[..., 2] / axes[2]
    ang = np.arctan2(qy, qx)
    bumpy = 1.0 + 0.12 * np.sin(2 * ang + harm[0]) + 0.08 * np.sin(3 * ang + harm[1])
    dist = np.sqrt(qx**2 + qy**2 + qz**2) / (radius * bumpy)
    tumour = _smoothstep(1.0 - dist, 0.08) * total
    necro = (_smoothstep(core - dist, 0.06) * total) if core > 0 else np.zeros_like(tumour)
    rim = np.clip(tumour - necro, 0.0, 1.0)
    tissue = np.maximum(gm + wm, 1e-6)
    oed = np.clip(_smoothstep(oedema - dist, 0.2) * total - tumour, 0.0, 1.0) * (0.4 + 0.6 * wm / tissue)
    keep = 1.0 - tumour / np.maximum(total, 1e-6)
    gm_n, wm_n, csf_n = gm * keep, wm * keep, csf * keep
    oed_frac = np.clip(oed / np.maximum(gm_n + wm_n, 1e-6), 0.0, 1.0) * ((gm_n + wm_n) > 1e-4)

    # -- metabolite maps on the MRSI grid
    global_scale = {m: float(rng.uniform(0.9, 1.1)) for m in METABOLITES}
    noise_level = float(rng.uniform(0.8, 1.2))
    psf_sigma = 0.6
    fine_total = _block_mean(total, f)
    brain_vox = fine_total > 0.5
    erode = max(1, round(2 * hr_size / 64))
    inner = ndimage.binary_erosion(brain_vox, structure=np.ones((3, 3, 1), bool), iterations=erode)
    rim_vox = brain_vox & ~inner
    p_fail = float(rng.uniform(0.1, 0.35))
    p_inner = float(rng.uniform(0.0, 0.01))
    field = ndimage.gaussian_filter(rng.random(brain_vox.shape), sigma=(1.0, 1.0, 0.0))
    thr = np.quantile(field[rim_vox], 1.0 - p_fail) if rim_vox.any() else np.inf
    failed = (rim_vox & (field > thr)) | (inner & (rng.random(brain_vox.shape) < p_inner))
    qmask = brain_vox & ~failed
    maps = {}
    for m in METABOLITES:
        cg, cw, cc = CONCENTRATIONS[m]
        c_tum = cw + severity * (TUMOUR[m] * (ins_factor if m == "Ins" else 1.0) - cw)
        conc = (gm_n * cg + wm_n * cw) * (1.0 - oed_frac + oed_frac * OEDEMA_FACTOR[m])
        conc = conc + csf_n * cc + rim * c_tum + necro * NECROSIS_FRACTION * cw
        coarse = _block_mean(conc * global_scale[m], f)
        coarse = ndimage.gaussian_filter(coarse, sigma=(psf_sigma, psf_sigma, 0.0), mode="constant")
        ref = 0.5 * (cg + cw)
        coarse = coarse + rng.normal(0.0, NOISE_RELATIVE[m] * ref * noise_level, size=coarse.shape)
        coarse = np.maximum(coarse, 0.02 * ref)
        maps[m] = np.where(qmask, coarse, 0.0).astype(np.float32)

    # -- MRI contrasts on the fine grid
    bias_waves = _random_waves(rng, 3, (150.0, 300.0))
    bias = np.exp(0.08 * _eval_waves(bias_waves, pts))
    gamma = float(rng.uniform(0.85, 1.15))
    t1_img = t1 * (1.0 - rim) + rim * 0.95
    t1_img = t1_img * (1.0 - necro / np.maximum(total, 1e-6)) + necro * 0.2
    t1_img = t1_img * (1.0 - 0.25 * oed)
    flair = (gm_n * 0.75 + wm_n * 0.55) * (1.0 - oed_frac) + (gm_n + wm_n) * oed_frac * 1.0
    flair = flair + csf_n * 0.08 + rim * 0.85 + necro * 0.35
    flair = ndimage.gaussian_filter(flair, sigma=0.5)
    inside = (total > 0.01).astype(np.float32)
    mri = {}
    for name, img, noise in (("t1", t1_img, 0.015), ("flair", flair, 0.02)):
        gain = float(rng.uniform(800.0, 1200.0))
        img = np.clip(img, 0.0, None) ** gamma * bias
        img = img + rng.normal(0.0, noise, size=img.shape).astype(np.float32)
        mri[name] = (np.clip(img, 0.0, None) * inside * gain).astype(np.float32)

    fr = {k: _block_mean(x, f) for k, x in (("oedema", oed), ("tumour", rim), ("necrosis", necro))}
    label = np.zeros(qmask.shape, dtype=np.uint8)
    stack = np.stack([fr["oedema"], fr["tumour"], fr["necrosis"]], axis=0)
    best = stack.argmax(axis=0)
    label[stack.max(axis=0) >= 0.3] = (best + 1)[stack.max(axis=0) >= 0.3].astype(np.uint8)
    c_vox_map = (c_idx - (f - 1) / 2) / f
    params = {
        "n_slices": int(n_slices),
        "slab_centre_mni_mm": [round(float(x), 3) for x in centre],
        "lr_flip": flip,
        "inplane_rotation_deg": round(angle, 3),
        "scale": round(scale, 4),
        "shift_mm": [round(float(x), 3) for x in shift],
        "elastic_rms_mm": round(elastic_mm, 3),
        "mri_gamma": round(gamma, 4),
        "lesion": {
            "centre_world_mm": [round(float(x), 2) for x in c_mm],
            "centre_map_voxel_ijk": [round(float(x), 2) for x in c_vox_map],
            "tumour_radius_mm": round(radius, 2),
            "necrotic_core_fraction_of_radius": round(core, 3),
            "oedema_extent_fraction_of_radius": round(oedema, 3),
            "axes_scale": [round(float(x), 3) for x in axes],
            "severity": round(severity, 3),
            "ins_factor": round(ins_factor, 3),
        },
        "metabolite_global_scale": {m: round(s, 4) for m, s in global_scale.items()},
        "noise_level": round(noise_level, 3),
        "psf_sigma_voxels": psf_sigma,
        "qc_rim_failure_fraction": round(p_fail, 3),
        "qc_inner_failure_probability": round(p_inner, 4),
        "n_valid_voxels": int(qmask.sum()),
        "n_failed_voxels": int(failed.sum()),
    }
    return {
        "maps": maps,
        "t1": mri["t1"],
        "flair": mri["flair"],
        "quality_mask": qmask,
        "lesion_label": label,
        "map_affine": aff,
        "mri_affine": aff_mri,
        "params": params,
    }
