"""Multi-site volumes -> checked, normalised, resampled 2D slices with case-level splits.

Two input layouts (``data.layout``):

* ``sites``: one folder per site, ``CaseXX.nii.gz`` with ``CaseXX_segmentation.nii.gz`` (any
  capitalisation of ``_segmentation``: BMC spells it ``_Segmentation``);
* ``nnunet``: ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``, ``dataset.json``; the site of
  a case is ``dataset.json["sites"][CASE]`` when present, otherwise the part of the case id before
  the first ``_`` (a dataset without either is one site named after its folder).

Preprocessing (one volume, arrays are (X, Y, Z) as nibabel returns them, axial slices last):

1. labels > 0 are merged into prostate = 1 (the NCI-ISBI sites carry two zone labels);
2. per-volume z-score of the image over all voxels (before resampling, so the crop does not
   change the statistics);
3. in-plane resampling to ``spacing_mm`` with ``torch.nn.functional.interpolate`` (bilinear for
   the image, bilinear on the mask then > 0.5), slices untouched;
4. centred crop/pad to ``size`` x ``size`` (pad value: the volume minimum).

The geometry needed to undo steps 3-4 is kept (:class:`Geometry`), so predictions can be written
back on the input grid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from medlearn.errors import DataError
from medlearn.io import read_nifti

if TYPE_CHECKING:
    from medlearn.itl.config import DataConfig

log = logging.getLogger(__name__)

NII = ".nii.gz"


@dataclass(frozen=True)
class CaseRef:
    """One case on disk."""

    site: str
    case: str
    image: Path
    mask: Path | None


@dataclass
class Geometry:
    """How a volume was resampled and cropped (enough to invert it).

    Attributes:
        shape: original (X, Y, Z).
        spacing: original voxel spacing (sx, sy, sz) in mm.
        resampled: in-plane size (X', Y') after resampling.
        offset: (ox, oy) start of the crop in the resampled grid (negative = padding).
        size: crop size.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    resampled: tuple[int, int]
    offset: tuple[int, int]
    size: int


# ---------------------------------------------------------------------------------------------- discovery
def _strip(name: str) -> str:
    return name[: -len(NII)] if name.endswith(NII) else Path(name).stem


def find_site_cases(root: str | Path, sites: list[str], require_mask: bool = True) -> list[CaseRef]:
    """Cases of the ``sites`` layout, in site order then case order.

    Raises:
        DataError: a site folder is missing or empty, or a case has no mask (names the case).
    """
    root = Path(root)
    refs: list[CaseRef] = []
    for site in sites:
        folder = root / site
        if not folder.is_dir():
            raise DataError(f"site folder '{folder}' does not exist (data.root='{root}', site '{site}')")
        files = sorted(p for p in folder.iterdir() if p.name.endswith(NII) or p.suffix == ".nii")
        masks = {_strip(p.name).lower(): p for p in files if _strip(p.name).lower().endswith("_segmentation")}
        images = [p for p in files if not _strip(p.name).lower().endswith("_segmentation")]
        if not images:
            raise DataError(f"site folder '{folder}' holds no CaseXX.nii.gz images")
        for img in images:
            case = _strip(img.name)
            mask = masks.get(f"{case.lower()}_segmentation")
            if mask is None and require_mask:
                raise DataError(
                    f"case '{site}/{case}': no mask '{case}_segmentation.nii.gz' (or '_Segmentation') in '{folder}'"
                )
            refs.append(CaseRef(site, case, img, mask))
    return refs


def find_nnunet_cases(
    root: str | Path, sites: list[str] | None = None, require_mask: bool = True
) -> list[CaseRef]:
    """Cases of an nnU-Net dataset (single channel ``_0000``), optionally only of ``sites``.

    Raises:
        DataError: no dataset.json/imagesTr, a multi-channel dataset, or a case without label.
    """
    root = Path(root)
    meta_file = root / "dataset.json"
    if not meta_file.is_file():
        raise DataError(f"nnU-Net dataset '{root}' has no dataset.json")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"'{meta_file}' is not valid JSON: {exc}") from None
    if len(meta.get("channel_names", {"0": "T2"})) != 1:
        raise DataError(
            f"'{meta_file}': only single-channel (T2) datasets are supported, got {meta['channel_names']}"
        )
    ending = meta.get("file_ending", NII)
    img_dir = root / "imagesTr"
    if not img_dir.is_dir():
        raise DataError(f"nnU-Net dataset '{root}' has no imagesTr folder")
    site_of = meta.get("sites", {})
    refs = []
    for img in sorted(img_dir.glob(f"*_0000{ending}")):
        case = img.name[: -len(f"_0000{ending}")]
        site = site_of.get(case) or (case.split("_")[0] if "_" in case else root.name)
        if sites is not None and site not in sites:
            continue
        mask = root / "labelsTr" / f"{case}{ending}"
        if not mask.is_file():
            if require_mask:
                raise DataError(f"case '{case}': label file '{mask}' is missing")
            mask = None
        refs.append(CaseRef(site, case, img, mask))
    if sites is not None:
        order = {s: i for i, s in enumerate(sites)}
        refs.sort(key=lambda r: (order[r.site], r.case))
        missing = [s for s in sites if s not in {r.site for r in refs}]
        if missing:
            raise DataError(f"nnU-Net dataset '{root}' has no cases of site(s) {missing}")
    return refs


def find_cases(root: str | Path, layout: str, sites: list[str]) -> list[CaseRef]:
    """Cases of ``sites`` in either layout (``sites`` or ``nnunet``)."""
    if layout == "nnunet":
        return find_nnunet_cases(root, sites)
    return find_site_cases(root, sites)


# ---------------------------------------------------------------------------------------------- reading
def read_volume(path: Path, what: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(X, Y, Z) float32 array, 4x4 affine and spacing of a NIfTI file (via :func:`medlearn.io.read_nifti`).

    Raises:
        DataError: ``what`` and the file named: missing, unreadable, not 3D, or non-finite values.
    """
    try:
        vol = read_nifti(path, expect_ndim=3)
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None
    return vol.data, vol.affine, tuple(vol.spacing)  # type: ignore[return-value]


def merge_labels(mask: np.ndarray) -> np.ndarray:
    """Prostate = 1 wherever any label > 0 (zone labels 1, 2 become 1). Returns uint8."""
    return (mask > 0).astype(np.uint8)


def load_case(
    ref: CaseRef, strict_affine: bool = True
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray]:
    """Image (X, Y, Z) float32, merged mask (X, Y, Z) uint8, spacing and affine of one case.

    Raises:
        DataError: missing mask, shape mismatch, or (with ``strict_affine``) affine mismatch; the
            message names the case.
    """
    name = f"{ref.site}/{ref.case}"
    image, affine, spacing = read_volume(ref.image, f"image of case '{name}'")
    if ref.mask is None:
        raise DataError(f"case '{name}' has no mask")
    mask, m_affine, _ = read_volume(ref.mask, f"mask of case '{name}'")
    if mask.shape != image.shape:
        raise DataError(f"case '{name}': image shape {image.shape} != mask shape {mask.shape}")
    if not np.allclose(affine, m_affine, atol=1e-3):
        msg = f"case '{name}': image and mask affines differ (image {affine.tolist()}, mask {m_affine.tolist()})"
        if strict_affine:
            raise DataError(msg + "; set data.strict_affine=false to accept it")
        log.warning(msg)
    return image, merge_labels(mask), spacing, affine


# ---------------------------------------------------------------------------------------------- preprocessing
def zscore(image: np.ndarray) -> np.ndarray:
    """Per-volume z-score ``(x - mean) / std`` over all voxels (std floored at 1e-6)."""
    return ((image - image.mean()) / max(float(image.std()), 1e-6)).astype(np.float32)


def resample_inplane(
    vol: np.ndarray, spacing: tuple[float, float, float], target_mm: float, mode: str
) -> np.ndarray:
    """Resample an (X, Y, Z) volume in-plane to ``target_mm`` spacing (slices unchanged).

    Args:
        mode: ``bilinear`` (images) or ``mask`` (bilinear on the binary mask, then > 0.5).
    Returns:
        (X', Y', Z) float32 with ``X' = round(X * sx / target_mm)``.
    """
    nx = max(1, int(round(vol.shape[0] * spacing[0] / target_mm)))
    ny = max(1, int(round(vol.shape[1] * spacing[1] / target_mm)))
    t = torch.from_numpy(np.ascontiguousarray(vol.transpose(2, 0, 1), dtype=np.float32))[:, None]
    out = (
        F.interpolate(t, size=(nx, ny), mode="bilinear", align_corners=False)[:, 0].numpy().transpose(1, 2, 0)
    )
    if mode == "mask":
        out = (out > 0.5).astype(np.float32)
    return np.ascontiguousarray(out)


def crop_or_pad(vol: np.ndarray, size: int, fill: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Centred crop/pad of the first two axes of (X, Y, ...) to ``size``; returns (array, offset)."""
    out = np.full((size, size) + vol.shape[2:], fill, dtype=vol.dtype)
    offs = []
    src, dst = [], []
    for n in vol.shape[:2]:
        o = (n - size) // 2  # start of the crop in the source (negative: padding)
        offs.append(o)
        s0, s1 = max(o, 0), min(o + size, n)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - o, s1 - o))
    out[dst[0], dst[1]] = vol[src[0], src[1]]
    return out, (offs[0], offs[1])


def preprocess(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    target_mm: float,
    size: int,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """z-score, resample in-plane and crop/pad one volume.

    Args:
        image: (X, Y, Z) raw intensities; mask: (X, Y, Z) binary or None.
    Returns:
        image (Z, S, S) float32, mask (Z, S, S) uint8 or None, and the :class:`Geometry`.
    """
    z = zscore(image)
    r = resample_inplane(z, spacing, target_mm, "bilinear")
    img, off = crop_or_pad(r, size, float(r.min()))
    geom = Geometry(tuple(image.shape), tuple(spacing), (r.shape[0], r.shape[1]), off, size)  # type: ignore[arg-type]
    m = None
    if mask is not None:
        rm = resample_inplane(mask.astype(np.float32), spacing, target_mm, "mask")
        m = crop_or_pad(rm, size, 0.0)[0].astype(np.uint8).transpose(2, 0, 1)
    return np.ascontiguousarray(img.transpose(2, 0, 1)), m, geom


def restore_probabilities(prob: np.ndarray, geom: Geometry) -> np.ndarray:
    """Undo crop/pad and resampling of a foreground-probability volume.

    Args:
        prob: (Z, S, S) probabilities on the preprocessed grid.
    Returns:
        (X, Y, Z) probabilities on the original grid (outside the crop: 0).
    """
    rx, ry = geom.resampled
    ox, oy = geom.offset
    full = np.zeros((prob.shape[0], rx, ry), np.float32)
    s = geom.size
    xs0, xs1 = max(ox, 0), min(ox + s, rx)
    ys0, ys1 = max(oy, 0), min(oy + s, ry)
    full[:, xs0:xs1, ys0:ys1] = prob[:, xs0 - ox : xs1 - ox, ys0 - oy : ys1 - oy]
    t = torch.from_numpy(full)[:, None]
    back = F.interpolate(t, size=geom.shape[:2], mode="bilinear", align_corners=False)[:, 0]
    return back.numpy().transpose(1, 2, 0)


# ---------------------------------------------------------------------------------------------- splits
def make_splits(
    cases: dict[str, list[str]], train_frac: float, val_frac: float, seed: int, heldout: list[str] = ()
) -> dict[str, dict[str, list[str]]]:
    """Seeded case-level split per site: ``{site: {"train": [...], "val": [...], "test": [...]}}``.

    Every case lands in exactly one split (no slice of a patient in two splits); held-out sites put
    every case in ``test``.  Each training site keeps at least one train and one test case.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for k, (site, names) in enumerate(sorted(cases.items())):
        names = sorted(names)
        if site in heldout:
            out[site] = {"train": [], "val": [], "test": names}
            continue
        rng = np.random.default_rng([seed, k])
        order = [names[i] for i in rng.permutation(len(names))]
        n = len(order)
        n_tr = min(max(1, int(round(train_frac * n))), max(1, n - 1))
        n_va = min(int(round(val_frac * n)), max(0, n - n_tr - 1))
        out[site] = {
            "train": sorted(order[:n_tr]),
            "val": sorted(order[n_tr : n_tr + n_va]),
            "test": sorted(order[n_tr + n_va :]),
        }
    return out


def load_or_make_splits(path: Path, cases: dict[str, list[str]], **kw) -> dict[str, dict[str, list[str]]]:
    """Read the split file ``path`` when it exists, otherwise make one with :func:`make_splits` and write it.

    Raises:
        DataError: the stored split does not hold exactly the cases found on disk.
    """
    if path.is_file():
        splits = json.loads(path.read_text())
        for site, names in cases.items():
            stored = {c for part in splits.get(site, {}).values() for c in part}
            if stored != set(names):
                raise DataError(
                    f"split file '{path}' does not match the cases on disk for site '{site}' "
                    f"(stored {len(stored)}, found {len(names)}); delete it to re-split"
                )
        return splits
    splits = make_splits(cases, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(splits, indent=2))
    return splits


# ---------------------------------------------------------------------------------------------- prepared data
@dataclass
class PreparedCase:
    """One preprocessed case: image (Z, S, S) float32, mask (Z, S, S) uint8, spacing in mm of that grid."""

    site: str
    case: str
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    geometry: Geometry


def prepare_case(ref: CaseRef, target_mm: float, size: int, strict_affine: bool = True) -> PreparedCase:
    """Read, check and preprocess one case."""
    image, mask, spacing, _ = load_case(ref, strict_affine)
    img, m, geom = preprocess(image, spacing, target_mm, size, mask)
    assert m is not None
    return PreparedCase(ref.site, ref.case, img, m, (target_mm, target_mm, spacing[2]), geom)


def save_prepared(pc: PreparedCase, folder: Path) -> Path:
    path = folder / pc.site / f"{pc.case}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")  # unique per process
    np.savez(
        tmp,
        image=pc.image,
        mask=pc.mask,
        spacing=np.array(pc.spacing),
        geometry=json.dumps(asdict(pc.geometry)),
    )
    tmp.replace(path)
    return path


def load_prepared(path: Path, site: str, case: str) -> PreparedCase:
    with np.load(path) as z:
        g = json.loads(str(z["geometry"]))
        geom = Geometry(
            tuple(g["shape"]), tuple(g["spacing"]), tuple(g["resampled"]), tuple(g["offset"]), g["size"]
        )
        return PreparedCase(site, case, z["image"], z["mask"], tuple(float(s) for s in z["spacing"]), geom)


def slice_stack(image: np.ndarray, z: int, context: int) -> np.ndarray:
    """(C, S, S) input for slice ``z`` of an (Z, S, S) volume; C = ``context`` (1 or 3, edges repeated)."""
    if context == 1:
        return image[z : z + 1]
    idx = np.clip([z - 1, z, z + 1], 0, image.shape[0] - 1)
    return image[idx]


def training_slices(mask: np.ndarray, margin: int) -> list[int]:
    """Slice indices within the prostate's z-range extended by ``margin`` (all slices if no prostate).

    Args:
        mask: (Z, S, S).
    """
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(1))
    if zs.size == 0:
        return list(range(mask.shape[0]))
    lo, hi = max(0, int(zs[0]) - margin), min(mask.shape[0] - 1, int(zs[-1]) + margin)
    return list(range(lo, hi + 1))


class SliceSet:
    """The training slices of a set of prepared cases (indexable rows ``(case index, z)``).

    Args:
        cases: prepared cases.
        context: 1 or 3 channels.
        margin: prostate z-range margin for the rows.
    """

    def __init__(self, cases: list[PreparedCase], context: int = 1, margin: int = 2) -> None:
        self.cases = cases
        self.context = context
        self.rows = [(i, z) for i, c in enumerate(cases) for z in training_slices(c.mask, margin)]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(
        self,
        idx: list[int] | np.ndarray,
        rng: np.random.Generator | Sequence[np.random.Generator] | None = None,
        augment: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, C, S, S) float32 and labels (B, S, S) int64 of rows ``idx``.

        With ``augment`` and ``rng``: random left-right flip and intensity scale/shift per slice,
        drawn from ``rng`` in turn, or from ``rng[i]`` for slice i when a sequence is given (so a
        slice's augmentation does not depend on which other slices share its batch).
        """
        xs, ys = [], []
        for i, r in enumerate(idx):
            ci, z = self.rows[int(r)]
            c = self.cases[ci]
            x = slice_stack(c.image, z, self.context)
            y = c.mask[z]
            g = rng[i] if isinstance(rng, Sequence) else rng
            if augment and g is not None:
                if g.random() < 0.5:
                    x, y = x[:, ::-1], y[::-1]
                x = x * g.uniform(0.9, 1.1) + g.uniform(-0.1, 0.1)
            xs.append(np.ascontiguousarray(x, dtype=np.float32))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


@dataclass
class MultiSiteData:
    """Prepared cases of every site and split: ``cases[site][split]`` (split: train/val/test)."""

    splits: dict[str, dict[str, list[str]]]
    cases: dict[str, dict[str, list[PreparedCase]]]

    def split(self, site: str, part: str) -> list[PreparedCase]:
        return self.cases[site][part]


def cache_folder(dcfg: DataConfig) -> Path:
    """``<cache_dir or root/.itl_cache>/<spacing>mm_<size>px``."""
    base = Path(dcfg.cache_dir) if dcfg.cache_dir else Path(dcfg.root) / ".itl_cache"
    return base / f"{dcfg.spacing_mm:g}mm_{dcfg.size}px"


def prepare_dataset(dcfg: DataConfig, fresh: bool = False, check_only: bool = False) -> MultiSiteData | None:
    """Find, check, split and preprocess every case of ``dcfg.sites + dcfg.heldout`` (cached as .npz).

    Args:
        dcfg: a ``DataConfig``.
        fresh: recompute cached volumes.
        check_only: only read and check every case (geometry, labels); return ``None``.

    Raises:
        DataError: naming the first bad case.
    """
    sites = list(dcfg.sites) + list(dcfg.heldout)
    refs = find_cases(dcfg.root, dcfg.layout, sites)
    by_site: dict[str, list[CaseRef]] = {s: [] for s in sites}
    for r in refs:
        by_site[r.site].append(r)
    if dcfg.max_cases_per_site > 0:
        by_site = {s: v[: dcfg.max_cases_per_site] for s, v in by_site.items()}
    if check_only:
        for rs in by_site.values():
            for r in rs:
                load_case(r, dcfg.strict_affine)
        log.info(
            "checked %d cases of %d sites: no problem found", sum(map(len, by_site.values())), len(by_site)
        )
        return None
    folder = cache_folder(dcfg)
    names = {s: [r.case for r in v] for s, v in by_site.items()}
    key = json.dumps([names, dcfg.train_frac, dcfg.val_frac, sorted(dcfg.heldout)], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    splits = load_or_make_splits(
        folder.parent / f"splits_seed{dcfg.split_seed}_{digest}.json",
        names,
        train_frac=dcfg.train_frac,
        val_frac=dcfg.val_frac,
        seed=dcfg.split_seed,
        heldout=list(dcfg.heldout),
    )
    cases: dict[str, dict[str, list[PreparedCase]]] = {}
    for s, rs in by_site.items():
        prepared = {}
        for r in rs:
            path = folder / s / f"{r.case}.npz"
            if path.is_file() and not fresh:
                prepared[r.case] = load_prepared(path, s, r.case)
            else:
                pc = prepare_case(r, dcfg.spacing_mm, dcfg.size, dcfg.strict_affine)
                save_prepared(pc, folder)
                prepared[r.case] = pc
        site_split = splits.get(s, {"train": [], "val": [], "test": list(prepared)})
        cases[s] = {
            part: [prepared[c] for c in site_split.get(part, []) if c in prepared]
            for part in ("train", "val", "test")
        }
    return MultiSiteData(splits, cases)
