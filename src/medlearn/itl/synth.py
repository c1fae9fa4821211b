"""Synthetic multi-site prostate T2 MRI benchmark, written in the real on-disk layouts.

Six sites named and sized like the public multi-site prostate collection (RUNMC 30, BMC 30,
I2CVB 19, UCL 13, BIDMC 12, HK 12 cases).  Every case is rendered from an analytic pelvis in
millimetre coordinates, then sampled on the site's own grid:

* anatomy (per case): a lobulated ellipsoidal prostate with a central/transition zone (nodular,
  intermediate T2) and a peripheral zone (bright), bladder (urine, very bright), rectum (dark
  wall, air or mucus lumen), obturator/levator muscles (dark), pubic bone, subcutaneous and
  pelvic fat (bright), with smooth multiplicative textures per tissue;
* acquisition (per site): in-plane spacing and slice thickness from the datasets' public descriptions (partial
  volume along z), field-strength-like contrast (a tissue-contrast table and a gamma), Rician
  noise, an endorectal-coil bias field (strong posterior gain) where the real site used one, a
  surface-coil gradient elsewhere, vendor-like blur, and an intensity scale/offset.

Layout ``sites`` (default)::

    OUT/RUNMC/Case00.nii.gz  OUT/RUNMC/Case00_segmentation.nii.gz   (labels 1 = central gland, 2 = PZ)
    OUT/BMC/Case00.nii.gz    OUT/BMC/Case00_Segmentation.nii.gz     (labels 1, 2)
    OUT/I2CVB/...            (label 1)     ... UCL, BIDMC, HK

Layout ``nnunet``::

    OUT/imagesTr/RUNMC_Case00_0000.nii.gz  OUT/labelsTr/RUNMC_Case00.nii.gz  OUT/dataset.json

With nibabel the axial slices are the last array axis (x, y, z); the affine is diagonal in mm.
This is synthetic data for testing pipelines; it is not a model of any real scanner.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from medlearn.errors import ConfigError
from medlearn.io import write_nifti

log = logging.getLogger(__name__)

SITE_ORDER = ("RUNMC", "BMC", "I2CVB", "UCL", "BIDMC", "HK")
SCALES = ("tiny", "small", "full")

# tissue codes used by the renderer
FAT, MUSCLE, BONE, BLADDER, RECTUM_WALL, RECTUM_LUMEN, CZ, PZ = range(1, 9)
_BASE_T2 = {0: 0.0, FAT: 0.78, MUSCLE: 0.28, BONE: 0.55, BLADDER: 1.0, RECTUM_WALL: 0.3, RECTUM_LUMEN: 0.08}
_BASE_T2.update({CZ: 0.42, PZ: 0.72})


@dataclass(frozen=True)
class SiteSpec:
    """Acquisition of one synthetic site (ranges are sampled per case).

    Attributes:
        cases: number of cases.
        inplane_mm: (low, high) in-plane spacing in mm.
        slice_mm: (low, high) slice thickness in mm.
        fov_mm: in-plane field of view in mm (full scale).
        zcover_mm: extent along z in mm.
        field_t: field strength (sets contrast compression and noise).
        coil: ``surface``, ``endorectal`` or ``none``.
        zones: write two zone labels (1 central gland, 2 peripheral zone) instead of one.
        seg_suffix: mask file suffix (``_segmentation``, BMC uses ``_Segmentation``).
        contrast: multiplicative change of each tissue's T2 intensity at this site.
        gamma: intensity gamma (vendor/sequence-like contrast curve).
        noise: Rician noise sigma relative to the fat intensity.
        blur_mm: in-plane Gaussian PSF sigma in mm.
        scale, offset: stored intensity = scale * signal + offset.
    """

    cases: int
    inplane_mm: tuple[float, float]
    slice_mm: tuple[float, float]
    fov_mm: float
    zcover_mm: float
    field_t: float
    coil: str
    zones: bool = False
    seg_suffix: str = "_segmentation"
    contrast: tuple[tuple[int, float], ...] = ()
    gamma: float = 1.0
    noise: float = 0.03
    blur_mm: float = 0.0
    scale: float = 1000.0
    offset: float = 0.0


SITES: dict[str, SiteSpec] = {
    "RUNMC": SiteSpec(30, (0.6, 0.625), (3.6, 4.0), 200, 76, 3.0, "surface", True, "_segmentation",
                      ((PZ, 1.0), (CZ, 1.0)), 1.0, 0.03, 0.3, 1500.0, 0.0),
    "BMC": SiteSpec(30, (0.4, 0.4), (3.0, 3.0), 140, 72, 1.5, "endorectal", True, "_Segmentation",
                    ((PZ, 0.72), (CZ, 1.25), (FAT, 1.1), (MUSCLE, 1.5)), 0.7, 0.06, 0.5, 3800.0, 120.0),
    "I2CVB": SiteSpec(19, (0.67, 0.79), (1.25, 1.25), 200, 76, 3.0, "none", False, "_segmentation",
                      ((PZ, 1.2), (CZ, 0.8), (FAT, 0.8), (BLADDER, 0.75)), 1.35, 0.025, 0.2, 600.0, 0.0),
    "UCL": SiteSpec(13, (0.325, 0.625), (3.0, 3.6), 160, 72, 1.5, "none", False, "_segmentation",
                    ((PZ, 0.85), (CZ, 1.1), (FAT, 0.65)), 0.85, 0.05, 0.45, 900.0, 50.0),
    "BIDMC": SiteSpec(12, (0.25, 0.25), (2.2, 3.0), 110, 66, 3.0, "endorectal", False, "_segmentation",
                      ((PZ, 0.6), (CZ, 1.45), (FAT, 1.15), (MUSCLE, 0.7), (BLADDER, 0.8)), 1.6, 0.04, 0.6,
                      2500.0, 0.0),
    "HK": SiteSpec(12, (0.625, 0.625), (3.6, 3.6), 140, 72, 1.5, "endorectal", False, "_segmentation",
                   ((PZ, 0.9), (CZ, 0.75), (FAT, 0.55), (MUSCLE, 1.6)), 0.6, 0.07, 0.7, 400.0, 200.0),
}  # fmt: skip

# in-plane spacing multiplier, FOV multiplier, slice-thickness multiplier, cases per site (None = real)
_SCALE = {
    "tiny": (5.0, 0.6, 1.5, 3),
    "small": (2.0, 0.8, 1.0, None),
    "full": (1.0, 1.0, 1.0, None),
}


def scaled_site(name: str, scale: str) -> SiteSpec:
    """The acquisition of site ``name`` at size ``scale`` (``tiny``, ``small`` or ``full``).

    Raises:
        ConfigError: for an unknown site or scale.
    """
    if name not in SITES:
        raise ConfigError(f"unknown synthetic site '{name}'; valid: {', '.join(SITE_ORDER)}")
    if scale not in _SCALE:
        raise ConfigError(f"unknown synth scale '{scale}'; valid: {', '.join(SCALES)}")
    k_xy, k_fov, k_z, n = _SCALE[scale]
    s = SITES[name]
    return replace(
        s,
        cases=n if n is not None else s.cases,
        inplane_mm=(s.inplane_mm[0] * k_xy, s.inplane_mm[1] * k_xy),
        slice_mm=(s.slice_mm[0] * k_z, s.slice_mm[1] * k_z),
        fov_mm=s.fov_mm * k_fov,
        zcover_mm=s.zcover_mm * (0.85 if scale == "tiny" else 1.0),
        blur_mm=s.blur_mm * k_xy,
    )


# ---------------------------------------------------------------------------------------------- anatomy
def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]
) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed noise field of ``shape``."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-6)


def _ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, c: tuple[float, float, float], r: tuple[float, ...]
) -> np.ndarray:
    """Normalised radius ``sqrt(sum(((p - c) / r)^2))`` (< 1 inside)."""
    return np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)


def _lobulation(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray, c, amp: float
) -> np.ndarray:
    """Radial modulation ``1 + sum a_k cos(k*theta + p) * cos(m*phi)`` giving a lobulated outline."""
    theta = np.arctan2(y - c[1], x - c[0])
    phi = np.arctan2(z - c[2], np.hypot(x - c[0], y - c[1]))
    out = np.ones_like(x)
    for k in (2, 3, 4, 5):
        out += (
            amp
            * rng.uniform(0.2, 1.0)
            / k
            * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
            * np.cos(rng.integers(0, 3) * phi)
        )
    return out


def render_anatomy(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Tissue codes on the physical grid ``(x, y, z)`` in mm (prostate centred near the origin).

    x: left-right, y: posterior (-) to anterior (+), z: inferior (-) to superior (+).

    Args:
        rng: case generator (anatomy variation).
        x, y, z: (X, Y, Z) coordinate arrays in mm.
    Returns:
        (X, Y, Z) uint8 tissue codes (0 = air outside the body).
    """
    t = np.zeros(x.shape, np.uint8)
    body = ((x / rng.uniform(150, 175)) ** 2 + ((y - 10) / rng.uniform(105, 125)) ** 2) < 1
    t[body] = FAT
    # obturator internus (lateral walls) and levator ani (below/beside the gland)
    for side in (-1, 1):
        ox = side * rng.uniform(48, 58)
        obt = _ellipsoid(x, y, z, (ox, 0.0, 5.0), (rng.uniform(9, 13), rng.uniform(30, 38), 60))
        t[(obt < 1) & body] = MUSCLE
        lev = _ellipsoid(x, y, z, (side * rng.uniform(26, 32), -12.0, -22.0), (7, 20, 25))
        t[(lev < 1) & body] = MUSCLE
    # pubic bone (anterior)
    for side in (-1, 1):
        pub = _ellipsoid(x, y, z, (side * 14.0, rng.uniform(38, 46), 0.0), (11, 8, 28))
        t[pub < 1] = BONE
    # bladder (superior, anterior)
    bc = (rng.uniform(-4, 4), rng.uniform(8, 16), rng.uniform(30, 38))
    br = (rng.uniform(28, 42), rng.uniform(22, 32), rng.uniform(16, 24))
    t[_ellipsoid(x, y, z, bc, br) < 1] = BLADDER
    # rectum: a tube along z behind the gland
    ry = rng.uniform(-31, -26)
    rr = rng.uniform(13, 17)
    rad = np.hypot((x - rng.uniform(-3, 3)) / rr, (y - ry) / (rr * 0.8))
    tube = (rad < 1) & (z > -45) & (z < 40)
    t[tube] = RECTUM_WALL
    t[(rad < rng.uniform(0.35, 0.7)) & tube] = RECTUM_LUMEN
    # prostate: lobulated ellipsoid; central gland anterior-superior, peripheral zone around it
    pc = (rng.uniform(-2, 2), rng.uniform(-4, 2), rng.uniform(-4, 4))
    pr = (rng.uniform(18, 26), rng.uniform(13, 18), rng.uniform(14, 22))
    lob = _lobulation(rng, x, y, z, pc, rng.uniform(0.06, 0.16))
    pros = _ellipsoid(x, y, z, pc, pr) < lob
    t[pros] = PZ
    cg_c = (pc[0], pc[1] + pr[1] * rng.uniform(0.15, 0.3), pc[2] + pr[2] * rng.uniform(0.05, 0.2))
    cg_r = tuple(
        r * f for r, f in zip(pr, (rng.uniform(0.55, 0.75), rng.uniform(0.55, 0.72), rng.uniform(0.6, 0.8)))
    )
    t[pros & (_ellipsoid(x, y, z, cg_c, cg_r) < lob)] = CZ
    return t


# ---------------------------------------------------------------------------------------------- acquisition
def _bias_field(site: SiteSpec, rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Multiplicative receive-coil profile on the (X, Y, Z) grid."""
    if site.coil == "endorectal":
        cy = -28.0 + rng.uniform(-2, 2)
        d = np.hypot(x, y - cy)
        return (1.0 + rng.uniform(2.5, 4.0) * np.exp(-d / rng.uniform(14, 22))).astype(np.float32)
    if site.coil == "surface":
        g = rng.uniform(0.002, 0.004)
        return (1.0 + g * (y + 60) + 0.0015 * np.abs(x)).astype(np.float32)
    return np.ones_like(x, dtype=np.float32)


def simulate_case(
    site_name: str, scale: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Render one case of ``site_name``.

    Returns:
        image (X, Y, Z) float32 stored intensities, label (X, Y, Z) uint8 (0 background, 1 central
        gland, 2 peripheral zone; the caller merges zones where the real site has one label) and the
        voxel spacing (sx, sy, sz) in mm.
    """
    site = scaled_site(site_name, scale)
    sxy = float(rng.uniform(*site.inplane_mm))
    sz = float(rng.uniform(*site.slice_mm))
    nx = int(round(site.fov_mm / sxy))
    ny = int(round(site.fov_mm * rng.uniform(0.85, 1.0) / sxy))
    nz = max(6, int(round(site.zcover_mm / sz)))
    sub = 3  # partial-volume sub-samples per slice
    xs = (np.arange(nx) - (nx - 1) / 2) * sxy + rng.uniform(-6, 6)
    ys = (np.arange(ny) - (ny - 1) / 2) * sxy + rng.uniform(-6, 6)
    zs = (np.arange(nz * sub) - (nz * sub - 1) / 2) * (sz / sub) + rng.uniform(-4, 4)
    x, y, z = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32), zs.astype(np.float32), indexing="ij")
    tissue = render_anatomy(rng, x, y, z)

    contrast = dict(_BASE_T2)
    for code, factor in site.contrast:
        contrast[code] = contrast[code] * factor
    lut = np.array([contrast.get(i, 0.0) for i in range(9)], np.float32)
    signal = lut[tissue]
    # tissue textures: smooth multiplicative fields, nodular central gland
    tex = _smooth_noise(rng, tissue.shape, (2.5 / sxy, 2.5 / sxy, 1.0))
    signal *= 1.0 + 0.08 * tex
    nod = _smooth_noise(rng, tissue.shape, (1.5 / sxy, 1.5 / sxy, 0.7))
    signal = np.where(tissue == CZ, signal * (1.0 + 0.22 * nod), signal)
    signal = np.where(tissue == PZ, signal * (1.0 + 0.1 * nod), signal)
    signal *= _bias_field(site, rng, x, y)
    if site.blur_mm > 0:
        signal = ndimage.gaussian_filter(signal, (site.blur_mm / sxy, site.blur_mm / sxy, 0))
    # partial volume along z: average the sub-samples of each slice
    signal = signal.reshape(nx, ny, nz, sub).mean(-1)
    lab_full = np.where(tissue == CZ, 1, np.where(tissue == PZ, 2, 0)).astype(np.uint8)
    label = lab_full[:, :, sub // 2 :: sub]
    signal = np.clip(signal, 0, None) ** site.gamma
    ref = float(np.percentile(signal[signal > 0], 90)) if np.any(signal > 0) else 1.0
    sigma = site.noise * ref * (3.0 / site.field_t) ** 0.5
    n1 = rng.standard_normal(signal.shape).astype(np.float32) * sigma
    n2 = rng.standard_normal(signal.shape).astype(np.float32) * sigma
    signal = np.sqrt((signal + n1) ** 2 + n2**2)
    image = (site.scale * signal / ref + site.offset).astype(np.float32)
    return image, label, (sxy, sxy, sz)


def _save(path: Path, data: np.ndarray, spacing: tuple[float, float, float]) -> None:
    write_nifti(path, data, np.diag([spacing[0], spacing[1], spacing[2], 1.0]))


def make_benchmark(
    out: str | Path,
    seed: int = 0,
    scale: str = "tiny",
    nnunet: bool = False,
    sites: tuple[str, ...] | list[str] = SITE_ORDER,
    cases_per_site: int | dict[str, int] | None = None,
) -> Path:
    """Write the synthetic multi-site benchmark to ``out`` and return ``out``.

    Args:
        out: output folder.
        seed: base seed; case ``i`` of site ``s`` uses ``(seed, site index, i)``.
        scale: ``tiny`` (tests, 3 cases/site, ~40-55 px matrices), ``small`` or ``full`` (real sizes).
        nnunet: write the nnU-Net layout (imagesTr/labelsTr/dataset.json) instead of site folders.
        sites: which sites to write.
        cases_per_site: override of the case count (one int for all, or per site).

    Raises:
        ConfigError: unknown site or scale, or a non-positive case count.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    case_sites: dict[str, str] = {}
    for s in sites:
        spec = scaled_site(s, scale)
        n = spec.cases
        if isinstance(cases_per_site, int):
            n = cases_per_site
        elif isinstance(cases_per_site, dict) and s in cases_per_site:
            n = int(cases_per_site[s])
        if n < 1:
            raise ConfigError(f"cases_per_site for site '{s}' must be >= 1, got {n}")
        for i in range(n):
            rng = np.random.default_rng([seed, SITE_ORDER.index(s), i])
            image, label, spacing = simulate_case(s, scale, rng)
            if not spec.zones:
                label = (label > 0).astype(np.uint8)
            case = f"Case{i:02d}"
            if nnunet:
                cid = f"{s}_{case}"
                _save(out / "imagesTr" / f"{cid}_0000.nii.gz", image, spacing)
                _save(out / "labelsTr" / f"{cid}.nii.gz", (label > 0).astype(np.uint8), spacing)
                case_sites[cid] = s
            else:
                _save(out / s / f"{case}.nii.gz", image, spacing)
                _save(out / s / f"{case}{spec.seg_suffix}.nii.gz", label, spacing)
        log.info("synth: site %s, %d cases (%s)", s, n, scale)
    if nnunet:
        meta = {
            "name": "SyntheticMultiSiteProstate",
            "channel_names": {"0": "T2"},
            "labels": {"background": 0, "prostate": 1},
            "numTraining": len(case_sites),
            "file_ending": ".nii.gz",
            "sites": case_sites,
        }
        (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out
