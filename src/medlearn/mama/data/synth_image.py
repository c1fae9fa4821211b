"""Rendering of synthetic full-field digital mammograms (one view of one breast).

The breast is described once in *breast coordinates* and projected into each view, so a finding
shows up in the CC and the MLO view of the same breast at the same depth (distance from the chest
wall towards the nipple) and in the same quadrant:

* ``depth`` in (0, 1): fraction of the chest-wall-to-nipple distance;
* ``ml`` in (-1, 1): medial (-) to lateral (+), the vertical image axis of CC views (lateral up);
* ``si`` in (-1, 1): superior (-) to inferior (+), the vertical image axis of MLO views.

Image model (arbitrary "attenuation" units in [0, 1], tissue bright as displayed): compressed
breast outline with a thickness roll-off near the edge, a skin line and a nipple; pectoral muscle in
MLO; fibroglandular tissue from 1/f^beta noise thresholded to the area fraction of the BI-RADS
density category; masses (round/oval/irregular; circumscribed/obscured/spiculated margins;
high/equal/low/fat-containing density) and calcification clusters (punctate/pleomorphic/fine
linear; grouped/segmental/linear/diffuse); detector blur and quantum noise. Images are rendered
with the chest wall at column 0 and mirrored for left breasts.

Not modelled: scatter, heel effect, compression-paddle shadows, implants, tomosynthesis.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# Fraction of breast area that is fibroglandular, per density category 1-4 (A-D).
DENSE_FRACTION = {1: (0.03, 0.10), 2: (0.12, 0.30), 3: (0.40, 0.60), 4: (0.65, 0.85)}
MASS_CONTRAST = {"+": 0.22, "=": 0.14, "-": 0.08, "0": 0.12}
Box = tuple[int, int, int, int]  # (ymin, xmin, ymax, xmax) in pixels, inclusive


@dataclass(frozen=True)
class Finding:
    """One lesion in breast coordinates (see module docstring).

    Attributes:
        kind: "mass" or "calc".
        depth, ml, si: position; size_mm: mass diameter or cluster extent.
        shape: "round" | "oval" | "irregular" (masses); margin: "circumscribed" | "obscured" | "spiculated".
        density: legend code "+", "=", "-", "0" (masses).
        morphology: "punctate" | "pleomorphic" | "fine_linear" | "coarse" (calcifications).
        distribution: "grouped" | "segmental" | "linear" | "diffuse" (calcifications).
        seed: drives the lesion's own details, identical in every view.
    """

    kind: str
    depth: float
    ml: float
    si: float
    size_mm: float
    shape: str = "round"
    margin: str = "circumscribed"
    density: str = "="
    morphology: str = "punctate"
    distribution: str = "grouped"
    seed: int = 0


@dataclass(frozen=True)
class Breast:
    """One breast: density category 1-4, size in mm, and its findings."""

    side: str
    density: int
    depth_mm: float
    height_mm: float
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    seed: int = 0


def power_law_noise(
    shape: tuple[int, int], beta: float, rng: np.random.Generator, stretch: float = 1.0
) -> np.ndarray:
    """Zero-mean unit-variance Gaussian field with power spectrum ~ 1/f^beta, (H, W) float32.

    ``stretch`` > 1 elongates structures along the horizontal (chest wall -> nipple) axis by
    compressing horizontal frequencies (fibrous, ductal orientation); 1 is isotropic.
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :] * stretch
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    field_ = np.fft.irfft2(spec, s=(h, w))
    field_ -= field_.mean()
    return (field_ / (field_.std() + 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class _Geometry:
    a: float  # chest wall -> nipple distance (mm)
    b: float  # half height of the outline (mm)
    cy: float  # vertical centre of the outline (mm)
    pect: tuple[float, float] | None  # MLO pectoral line: x at top, y at chest wall (mm)


def _geometry(breast: Breast, view: str, height_mm: float, width_mm: float) -> _Geometry:
    a = min(breast.depth_mm, 0.9 * width_mm)
    if view.startswith("MLO") or view == "ML":
        a = min(a * 1.08, 0.92 * width_mm)
        b = min(breast.height_mm * 0.62, 0.48 * height_mm)
        cy = 0.56 * height_mm
        rng = np.random.default_rng([breast.seed, 7])
        pect = (
            (a * rng.uniform(0.25, 0.42), height_mm * rng.uniform(0.35, 0.55))
            if view.startswith("MLO")
            else None
        )
        return _Geometry(a, b, cy, pect)
    b = min(breast.height_mm * 0.5, 0.45 * height_mm)
    return _Geometry(a, b, 0.5 * height_mm, None)


def finding_center(f: Finding, view: str, geo: _Geometry) -> tuple[float, float]:
    """(y, x) in mm of a finding's centre in a view (chest wall at x = 0)."""
    x = f.depth * geo.a
    lateral = geo.b * 0.72 * np.sqrt(max(1.0 - f.depth**2, 0.05))
    if view.startswith("MLO") or view == "ML":
        y = geo.cy + f.si * lateral
        if geo.pect is not None:
            px0, py0 = geo.pect
            edge = px0 * (1.0 - y / py0) if y < py0 else 0.0
            x = max(x, edge + f.size_mm * 0.6)
    else:
        y = geo.cy - f.ml * lateral
    return float(y), float(x)


def _outline(yy: np.ndarray, xx: np.ndarray, geo: _Geometry, rng: np.random.Generator) -> np.ndarray:
    """Elliptic radius r (inside: r < 1) with a gentle boundary wobble."""
    theta = np.arctan2(yy - geo.cy, xx)
    wobble = 1.0
    for k in (3, 5, 7):
        wobble = wobble + rng.uniform(0.005, 0.02) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.sqrt((xx / geo.a) ** 2 + ((yy - geo.cy) / geo.b) ** 2) / wobble
    if geo.pect is not None:  # the axillary part above the ellipse, covering the pectoral muscle
        px0, py0 = geo.pect
        r_ax = xx / (1.3 * px0) + np.clip((geo.cy - yy) / geo.cy, 0, None) * 0.15
        r_ax = np.where(yy < geo.cy, r_ax, 10.0)
        k = 10.0  # smooth minimum: no corner where the axillary part meets the ellipse
        r = -np.logaddexp(-k * r, -k * r_ax) / k
    return r


def _draw_mass(
    img: np.ndarray,
    f: Finding,
    center_px: tuple[float, float],
    sp: float,
    thick: np.ndarray,
    gain: float = 1.0,
) -> Box | None:
    """Add a mass to ``img`` in place (contrast x ``gain``); its core box, or None when it falls off the image."""
    rng = np.random.default_rng([f.seed, 1])
    radius = f.size_mm / 2.0 / sp
    reach = radius * (2.8 if f.margin == "spiculated" else 1.6) + 2
    cy, cx = center_px
    y0, y1 = int(max(cy - reach, 0)), int(min(cy + reach + 1, img.shape[0]))
    x0, x1 = int(max(cx - reach, 0)), int(min(cx + reach + 1, img.shape[1]))
    if y1 <= y0 or x1 <= x0:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    theta = np.arctan2(dy, dx)
    dist = np.hypot(dy, dx)
    if f.shape == "oval":
        ang = rng.uniform(0, np.pi)
        aspect = rng.uniform(1.3, 1.8)
        u = dx * np.cos(ang) + dy * np.sin(ang)
        v = -dx * np.sin(ang) + dy * np.cos(ang)
        rho = np.sqrt((u / (radius * np.sqrt(aspect))) ** 2 + (v * np.sqrt(aspect) / radius) ** 2)
    elif f.shape == "irregular":
        rad = np.ones_like(theta)
        for k in range(2, 7):
            rad += rng.uniform(0.05, 0.18) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
        rho = dist / (radius * rad)
    else:
        rho = dist / radius
    if f.margin == "circumscribed":
        prof = np.sqrt(np.clip(1.0 - rho**2, 0, 1))
    else:
        prof = 1.0 / (1.0 + np.exp(np.clip((rho - 0.9) / 0.12, -50, 50)))
    amp = MASS_CONTRAST.get(f.density, 0.14) * gain
    add = amp * prof
    if f.density == "0":  # fat-containing: bright rim, lucent centre
        add = amp * prof - 0.18 * np.clip(1.0 - rho / 0.7, 0, 1)
    if f.margin == "spiculated":
        n = int(rng.integers(8, 16))
        for ang in rng.uniform(0, 2 * np.pi, n):
            length = radius * rng.uniform(1.6, 2.6)
            along = dx * np.cos(ang) + dy * np.sin(ang)
            across = np.abs(-dx * np.sin(ang) + dy * np.cos(ang))
            width = max(0.4 / sp, 0.5)
            spic = np.exp(-((across / width) ** 2)) * np.clip(1 - along / length, 0, 1) * (along > 0)
            add = add + amp * 0.5 * spic
    img[y0:y1, x0:x1] += add * thick[y0:y1, x0:x1]
    core = prof > 0.05
    if not core.any():
        return None
    ys, xs = np.nonzero(core)
    return int(ys.min() + y0), int(xs.min() + x0), int(ys.max() + y0), int(xs.max() + x0)


def _calc_points(f: Finding, view: str) -> np.ndarray:
    """(N, 2) offsets (along depth, across) in mm of the calcifications of a cluster, view-consistent."""
    rng = np.random.default_rng([f.seed, 2])
    n = int(rng.integers(6, 25)) if f.distribution != "diffuse" else int(rng.integers(15, 40))
    ext = f.size_mm
    if f.distribution == "grouped":
        pts = rng.normal(0, ext / 4, (n, 2))
    elif f.distribution in ("segmental", "linear"):
        t = rng.uniform(-0.5, 0.5, n) * ext * 2
        spread = ext / 5 if f.distribution == "segmental" else ext / 20
        pts = np.stack([t, rng.normal(0, spread, n) + 0.15 * t], 1)
    else:  # diffuse
        pts = rng.uniform(-ext, ext, (n, 2)) * 2
    across_rng = np.random.default_rng([f.seed, 3 if view.startswith(("MLO", "ML")) else 4])
    pts[:, 1] += across_rng.normal(0, ext / 20, n)  # projections differ a little across views
    return pts


def _draw_calcs(
    img: np.ndarray,
    f: Finding,
    center_px: tuple[float, float],
    sp: float,
    inside: np.ndarray,
    view: str,
    gain: float = 1.0,
) -> Box | None:
    """Add a calcification cluster in place (speck sizes x ``gain``); the box around the specks inside the breast, or None."""
    rng = np.random.default_rng([f.seed, 5])
    pts = _calc_points(f, view)
    boxes = []
    h, w = img.shape
    for dd, aa in pts:
        cy, cx = center_px[0] + aa / sp, center_px[1] + dd / sp
        if not (0 <= cy < h and 0 <= cx < w) or not inside[int(cy), int(cx)]:
            continue
        if f.morphology == "pleomorphic":
            size_mm = rng.uniform(0.15, 0.7)
        elif f.morphology == "coarse":
            size_mm = rng.uniform(0.6, 1.5)
        else:
            size_mm = rng.uniform(0.15, 0.4)
        size_mm *= gain
        s = max(size_mm / sp / 2, 0.6)
        elong = rng.uniform(2.5, 5.0) if f.morphology == "fine_linear" else rng.uniform(1.0, 1.6)
        ang = rng.uniform(0, np.pi)
        r = int(np.ceil(s * elong * 2.5)) + 1
        y0, y1, x0, x1 = (
            int(max(cy - r, 0)),
            int(min(cy + r + 1, h)),
            int(max(cx - r, 0)),
            int(min(cx + r + 1, w)),
        )
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        amp = 0.55 * min(1.0, max(size_mm / sp, 0.35))
        img[y0:y1, x0:x1] += amp * np.exp(-((u / (s * elong)) ** 2) - (v / s) ** 2)
        boxes.append((cy, cx))
    if not boxes:
        return None
    arr = np.array(boxes)
    pad = max(1.0 / sp, 1.0)
    y0, x0 = np.floor(arr.min(0) - pad).astype(int)
    y1, x1 = np.ceil(arr.max(0) + pad).astype(int)
    return int(max(y0, 0)), int(max(x0, 0)), int(min(y1, h - 1)), int(min(x1, w - 1))


def render_view(
    breast: Breast,
    view: str,
    shape: tuple[int, int],
    spacing_mm: float,
    rng: np.random.Generator,
    *,
    marker: bool = False,
    conspicuity: float = 1.0,
) -> tuple[np.ndarray, list[Box | None]]:
    """Render one view of one breast.

    Args:
        breast: the breast and its findings.
        view: "CC", "MLO", "XCCL" (rendered like CC) or "ML" (like MLO without pectoral muscle).
        shape: (H, W) in pixels; spacing_mm: pixel size.
        rng: texture / noise randomness for this image.
        marker: burn in a small bright laterality marker away from the breast (as on real films).
        conspicuity: mass contrast and calcification speck size are multiplied by it (1 = the
            realistic values above; benchmarks at 64 px use > 1 so that a reader could point at
            the findings at that resolution).
    Returns:
        image (H, W) float32 in [0, 1] (tissue bright), and per finding its ROI box
        ``(ymin, xmin, ymax, xmax)`` in pixels (None when it fell outside the image).
    """
    h, w = shape
    height_mm, width_mm = h * spacing_mm, w * spacing_mm
    geo = _geometry(breast, view, height_mm, width_mm)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = (yy + 0.5) * spacing_mm, (xx + 0.5) * spacing_mm
    r = _outline(yy, xx, geo, np.random.default_rng([breast.seed, zlib.crc32(view.encode()), 11]))
    inside = r < 1.0
    edge_mm = (1.0 - r) * min(geo.a, geo.b)
    thick = np.clip(edge_mm / 12.0, 0, 1) ** 0.6 * inside
    # nipple: small half disc at the tip of the outline
    nip_r = 4.0 + 2.0 * rng.random()
    nip_y = geo.cy + (0 if not geo.pect else -0.05 * geo.b)
    nipple = np.hypot(yy - nip_y, xx - geo.a) < nip_r
    # fibroglandular tissue
    noise = power_law_noise((h, w), 3.0, rng, stretch=2.0)
    fine = power_law_noise((h, w), 2.0, rng, stretch=3.0)
    envelope = np.exp(-(((yy - geo.cy) / (0.6 * geo.b)) ** 2) - ((xx / geo.a - 0.45) / 0.45) ** 2)
    subcutaneous = np.clip((edge_mm - 4.0) / 12.0, 0, 1)  # a fat layer under the skin
    fld = noise + 2.0 * envelope - 3.0 * (1.0 - subcutaneous)
    lo, hi = DENSE_FRACTION[int(np.clip(breast.density, 1, 4))]
    frac = rng.uniform(lo, hi)
    q = np.quantile(fld[inside], 1.0 - frac) if inside.any() else 0.0
    gland = 1.0 / (1.0 + np.exp(np.clip(-(fld - q) / 0.25, -50, 50)))
    img = thick * (0.30 + 0.36 * gland + 0.05 * fine * (0.4 + gland))
    # skin line and nipple
    skin = inside & (edge_mm < 1.8)
    img = img + 0.10 * skin + 0.28 * (nipple & ~inside)
    # pectoral muscle (MLO)
    if geo.pect is not None:
        px0, py0 = geo.pect
        bulge = 1.0 + 0.08 * np.sin(np.pi * np.clip(yy / py0, 0, 1))
        d = (xx / px0 + yy / py0) / bulge
        muscle = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) / 0.02, -50, 50))) * inside
        img = img + muscle * (0.22 + 0.03 * fine)
    boxes: list[Box | None] = []
    for f in breast.findings:
        cy, cx = finding_center(f, view, geo)
        c_px = (cy / spacing_mm, cx / spacing_mm)
        if f.kind == "mass":
            boxes.append(_draw_mass(img, f, c_px, spacing_mm, thick, conspicuity))
        else:
            boxes.append(_draw_calcs(img, f, c_px, spacing_mm, inside, view, conspicuity))
    img = ndimage.gaussian_filter(img, 0.6)
    img = img + rng.normal(0, 1, img.shape) * (0.004 + 0.012 * np.sqrt(np.clip(img, 0, None)))
    if marker:
        my, mx = int(0.04 * h), int(0.85 * w)
        s = max(2, int(0.03 * h))
        img[my : my + s, mx : mx + s] = 0.95
    img = np.clip(img, 0, 1).astype(np.float32)
    if breast.side == "L":
        img = img[:, ::-1].copy()
        boxes = [None if b is None else (b[0], w - 1 - b[3], b[2], w - 1 - b[1]) for b in boxes]
    return img, boxes
