"""``prepare``: EMBED / RSNA tables + DICOMs -> cached, preprocessed images and one per-image table.

Output folder::

    out/images/<image_id>.png|.npy      foreground-cropped, long side ``long_side``, 8- or 16-bit
    out/table.csv                       per-image table (tables.IMAGE_COLUMNS + the columns below)
    out/legend.csv                      legend used for the reports
    out/splits/<source>/splits.csv      patient-level split; balanced_test_<label>.csv subsets
    out/skipped.csv                     images whose DICOM could not be read (image_id, path, error)
    out/cache_index.csv, .json          images cached so far (an interrupted run resumes from here)
    out/prepare_report.json             counts: images per source, dropped by reason, skipped

Extra columns of ``table.csv``: ``image_path`` (relative to ``out``), ``split`` (patient-level, per source), ``crop_y0``,
``crop_x0``, ``crop_y1``, ``crop_x1`` (crop box in DICOM pixels), ``scale`` (output / DICOM
pixels), ``orig_rows``, ``orig_cols``.

Pixels: modality transform, VOI (window centre/width or VOI LUT when present, ``window="voi"``;
the reference's ``"max"`` scales by the maximum instead), MONOCHROME1 inversion (tissue bright), all
in float; then Otsu foreground crop and antialiased resize in float; quantisation is the last step.
A DICOM that cannot be read is skipped, listed and counted (an error with ``strict=True``).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medlearn.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    """Options of :func:`prepare_dataset`.

    Attributes:
        long_side: long side of the cached image in pixels (reference 1080).
        bits: 8 (reference) or 16.
        fmt: "png" or "npy".
        window: "voi" (header window / VOI LUT, else min-max) or "max" (reference: divide by the maximum).
        crop: Otsu foreground crop before resizing.
        workers: processes.
        strict: raise on the first unreadable DICOM instead of skipping it.
        check_only: validate tables and DICOM headers only (no pixels decoded, nothing cached);
            writes ``skipped.csv`` and ``prepare_report.json``.
        resume: reuse images cached by an earlier run with the same options (``cache_index.csv``).
        split_fractions, split_seed: patient-level split; balanced_seed: balanced test subsets.
        strip_prefix: removed from EMBED ``anon_dicom_path`` values; exclude_spot_mag: drop spot/mag views.
        clinical_fallback: an image whose exam has no clinical row of its side and no bilateral
            row takes the best row of the whole exam (``exam``, the reference) or is dropped
            (``none``; an empty ``side`` then counts as bilateral, as in the EMBED README).
    """

    long_side: int = 1080
    bits: int = 8
    fmt: str = "png"
    window: str = "voi"
    crop: bool = True
    workers: int = 1
    strict: bool = False
    check_only: bool = False
    resume: bool = True
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    balanced_seed: int = 42
    strip_prefix: str = ""
    exclude_spot_mag: bool = False
    clinical_fallback: str = "exam"

    def check(self) -> None:
        if self.bits not in (8, 16):
            raise ConfigError(f"prepare.bits must be 8 or 16, got {self.bits}")
        if self.fmt not in ("png", "npy"):
            raise ConfigError(f"prepare.fmt must be 'png' or 'npy', got {self.fmt!r}")
        if self.window not in ("voi", "max"):
            raise ConfigError(f"prepare.window must be 'voi' or 'max', got {self.window!r}")
        if self.long_side < 8:
            raise ConfigError(f"prepare.long_side must be >= 8, got {self.long_side}")
        if self.clinical_fallback not in ("exam", "none"):
            raise ConfigError(
                f"prepare.clinical_fallback must be 'exam' or 'none', got {self.clinical_fallback!r}"
            )


def dicom_to_unit(path: str | Path, window: str = "voi") -> np.ndarray:
    """(H, W) float32 in [0, 1], tissue bright, from a mammography DICOM.

    ``window="voi"``: the header's VOI LUT / window when present, scaled by the output range;
    otherwise (and for ``"max"`` without a window) min-max of the modality values. ``"max"``: divide
    by the maximum (reference). MONOCHROME1 is inverted in both.
    """
    from medlearn.io.dicom import read_dicom

    if window == "voi":
        im = read_dicom(path, apply_voi=True, invert_monochrome1=True)
        x = im.pixels.astype(np.float32)
        if im.voi_applied:
            lo, hi = im.value_range
        else:
            lo, hi = float(x.min()), float(x.max())
        return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    im = read_dicom(path, apply_voi=False, invert_monochrome1=True)
    x = im.pixels.astype(np.float32)
    x = x - min(float(x.min()), 0.0)
    return (x / max(float(x.max()), 1e-6)).astype(np.float32)


def save_image(path: Path, img: np.ndarray, bits: int, fmt: str) -> None:
    """Quantise a [0, 1] image to ``bits`` and write it as PNG or NPY (atomically)."""
    from PIL import Image

    top = 255 if bits == 8 else 65535
    q = np.round(np.clip(img, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if fmt == "npy":
        with open(tmp, "wb") as fh:
            np.save(fh, q)
    else:
        Image.fromarray(q).save(tmp, format="PNG")
    tmp.replace(path)


def load_image(path: str | Path, raw: bool = False) -> np.ndarray:
    """A cached image (PNG 8/16-bit or NPY) as (H, W) float32 in [0, 1] (``raw``: the stored uint array)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            arr = np.load(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.array(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read cached image ({exc})") from exc
    if raw:
        return arr
    top = 255.0 if arr.dtype == np.uint8 else 65535.0
    return arr.astype(np.float32) / top


def _process(job: tuple[str, str, dict]) -> dict[str, Any]:
    """Worker: one DICOM -> one cached image. Returns crop/scale info or an error message."""
    import torch

    from medlearn.mama.data.transforms import foreground_box, resize

    src, dst, opts = job
    torch.set_num_threads(1)
    if opts.get("check_only"):
        from medlearn.io.dicom import read_dicom_header

        try:
            header = read_dicom_header(src)
        except DataError as exc:
            return {"error": str(exc)}
        if header.rows < 1 or header.columns < 1 or header.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            return {
                "error": f"{src}: not a greyscale 2D image ({header.photometric}, {header.rows}x{header.columns})"
            }
        return {"orig_rows": header.rows, "orig_cols": header.columns}
    try:
        img = dicom_to_unit(src, opts["window"])
    except DataError as exc:
        return {"error": str(exc)}
    h, w = img.shape
    y0, x0, y1, x1 = foreground_box(img, margin=2) if opts["crop"] else (0, 0, h, w)
    crop = img[y0:y1, x0:x1]
    scale = opts["long_side"] / max(crop.shape)
    size = (max(1, int(round(crop.shape[0] * scale))), max(1, int(round(crop.shape[1] * scale))))
    out = resize(torch.from_numpy(np.ascontiguousarray(crop)), size).numpy()
    save_image(Path(dst), out, opts["bits"], opts["fmt"])
    return {
        "crop_y0": y0,
        "crop_x0": x0,
        "crop_y1": y1,
        "crop_x1": x1,
        "scale": scale,
        "orig_rows": h,
        "orig_cols": w,
    }


def _run_jobs(
    jobs: list, workers: int, strict: bool, on_result: Callable[[int, dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Run ``_process`` over ``jobs`` (in order); ``on_result(i, result)`` is called as each one finishes."""
    from medlearn.engine.progress import Progress

    results: list[dict[str, Any]] = []
    with Progress(len(jobs), "prepare") as bar:
        if workers <= 1 or len(jobs) <= 1:
            it = map(_process, jobs)
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(workers)
            it = pool.imap(_process, jobs, chunksize=4)
        try:
            for i, (job, res) in enumerate(zip(jobs, it)):
                if "error" in res and strict:
                    raise DataError(f"prepare --strict: {res['error']}")
                if "error" in res:
                    log.warning("skipped %s: %s", job[0], res["error"])
                if on_result is not None:
                    on_result(i, res)
                results.append(res)
                bar.update()
        finally:
            if pool is not None:
                pool.terminate()
    return results


INFO_COLUMNS = ("crop_y0", "crop_x0", "crop_y1", "crop_x1", "scale", "orig_rows", "orig_cols")


class CacheIndex:
    """``cache_index.csv``: images already cached by an earlier run with the same options (resume).

    Rows are appended as images finish, so an interrupted ``prepare`` restarts where it stopped.
    A different set of cache options (``cache_index.json``) or ``resume=False`` starts afresh.
    """

    def __init__(self, out: Path, opts: dict[str, Any], resume: bool) -> None:
        self.path, self.meta = out / "cache_index.csv", out / "cache_index.json"
        key = json.dumps(opts, sort_keys=True)
        self.done: dict[str, dict[str, Any]] = {}
        if resume and self.path.is_file() and self.meta.is_file() and self.meta.read_text() == key:
            df = pd.read_csv(self.path, dtype={"image_id": str})
            if set(INFO_COLUMNS) <= set(df.columns):
                self.done = {r["image_id"]: {c: r[c] for c in INFO_COLUMNS} for r in df.to_dict("records")}
        else:
            self.path.unlink(missing_ok=True)
            self.meta.write_text(key)
        self._fh = None

    def add(self, image_id: str, info: dict[str, Any]) -> None:
        if self._fh is None:
            new = not self.path.is_file()
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            if new:
                self._fh.write(",".join(("image_id", *INFO_COLUMNS)) + "\n")
        self._fh.write(",".join([image_id, *(str(info[c]) for c in INFO_COLUMNS)]) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _fail_if_nothing_readable(
    table: pd.DataFrame,
    ok: np.ndarray,
    skipped: pd.DataFrame,
    roots: list[Path],
    cfg: PrepareConfig,
    has_embed: bool,
) -> None:
    """One :class:`DataError` when a source (EMBED or RSNA) has images listed but none readable.

    A wrong ``--strip-prefix`` / ``--embed-dicom-root`` makes every EMBED path miss its file; without
    this check ``prepare`` would skip them all, exit 0 and leave the problem to ``train``.  Some
    unreadable images among readable ones stay skips (listed in ``skipped.csv``).
    """
    for source in ("embed", "rsna"):
        rows = (table["source"] == source).to_numpy()
        if not rows.any() or ok[rows].any():
            continue
        first = skipped[table["source"][~ok].to_numpy() == source].iloc[0]
        n = int(rows.sum())
        if source == "embed":
            root = roots[0] if has_embed else None
            raise DataError(
                f"prepare: none of the {n} EMBED images could be read, e.g. {first['error']}. "
                "Each anon_dicom_path minus --strip-prefix is looked up under --embed-dicom-root: set "
                "these two flags so that the paths reach your DICOM files (skipped.csv in the prepared "
                f"folder lists every path tried); now --strip-prefix={cfg.strip_prefix!r}, --embed-dicom-root={root}"
            )
        raise DataError(
            f"prepare: none of the {n} RSNA images could be read, e.g. {first['error']}. "
            "--rsna must be the folder holding train.csv and train_images/<patient_id>/<image_id>.dcm "
            f"(skipped.csv in the prepared folder lists every path tried); now --rsna={roots[-1]}"
        )


def prepare_dataset(
    out: str | Path,
    *,
    embed_dir: str | Path | None = None,
    rsna_dir: str | Path | None = None,
    dicom_root_embed: str | Path | None = None,
    cfg: PrepareConfig = PrepareConfig(),
) -> dict[str, Any]:
    """Read the tables, cache every image, split, and write the prepared folder (module docstring).

    Args:
        out: prepared folder (created).
        embed_dir: folder holding the EMBED CSVs (found by name pattern).
        rsna_dir: folder holding RSNA ``train.csv`` and ``train_images/``.
        dicom_root_embed: folder that EMBED ``anon_dicom_path`` values are relative to (default ``embed_dir``).
        cfg: options.
    Returns:
        the report dict also written to ``prepare_report.json``.
    """
    from medlearn.mama.data.splits import patient_split, write_splits
    from medlearn.mama.data.tables import DEFAULT_LEGEND, legend_table, read_embed, read_rsna

    cfg.check()
    if embed_dir is None and rsna_dir is None:
        raise ConfigError("prepare needs at least one of embed_dir / rsna_dir")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables, roots, report = [], [], {"config": asdict(cfg), "dropped": {}, "images": {}}
    legend = dict(DEFAULT_LEGEND)
    if embed_dir is not None:
        t, dropped, legend = read_embed(
            embed_dir,
            strip_prefix=cfg.strip_prefix,
            exclude_spot_mag=cfg.exclude_spot_mag,
            clinical_fallback=cfg.clinical_fallback,
        )
        tables.append(t)
        roots.append(Path(dicom_root_embed or embed_dir))
        report["dropped"]["embed"] = dropped
    if rsna_dir is not None:
        t = read_rsna(Path(rsna_dir) / "train.csv")
        tables.append(t)
        roots.append(Path(rsna_dir))
    opts = {
        "window": cfg.window,
        "crop": cfg.crop,
        "long_side": cfg.long_side,
        "bits": cfg.bits,
        "fmt": cfg.fmt,
        "check_only": cfg.check_only,
    }
    jobs, frames = [], []
    for t, root in zip(tables, roots):
        t = t.copy()
        t["image_path"] = "images/" + t["image_id"] + "." + cfg.fmt
        frames.append(t)
        jobs += [(str(root / p), str(out / ip), opts) for p, ip in zip(t["dicom_path"], t["image_path"])]
    table = pd.concat(frames, ignore_index=True)
    if table["image_id"].duplicated().any():
        dup = table.loc[table["image_id"].duplicated(), "image_id"].head(5).tolist()
        raise DataError(f"image ids are not unique across the inputs, e.g. {dup}")
    if cfg.check_only:
        results = _run_jobs(jobs, cfg.workers, cfg.strict)
    else:
        index = CacheIndex(out, {k: v for k, v in opts.items() if k != "check_only"}, cfg.resume)
        ids = table["image_id"].tolist()
        results = [None] * len(jobs)
        todo = []
        for i, job in enumerate(jobs):
            if ids[i] in index.done and Path(job[1]).is_file():
                results[i] = index.done[ids[i]]
            else:
                todo.append(i)
        if len(todo) < len(jobs):
            log.info("prepare: resuming, %d of %d image(s) already cached", len(jobs) - len(todo), len(jobs))

        def record(k: int, res: dict[str, Any]) -> None:
            results[todo[k]] = res
            if "error" not in res:
                index.add(ids[todo[k]], res)

        try:
            _run_jobs([jobs[i] for i in todo], cfg.workers, cfg.strict, record)
        finally:
            index.close()
    errors = [r.get("error") for r in results]
    ok = np.array([e is None for e in errors])
    skipped = pd.DataFrame(
        {
            "image_id": table["image_id"][~ok],
            "dicom_path": [j[0] for j, k in zip(jobs, ok) if not k],
            "error": [e for e in errors if e is not None],
        }
    )
    skipped.to_csv(out / "skipped.csv", index=False)
    _fail_if_nothing_readable(table, ok, skipped, roots, cfg, embed_dir is not None)
    if cfg.check_only:
        report.update(
            n_images=int(ok.sum()), n_skipped=int((~ok).sum()), skipped=skipped["dicom_path"].tolist()
        )
        (out / "prepare_report.json").write_text(json.dumps(report, indent=2))
        log.info(
            "check: %d readable image(s), %d unreadable (see %s)", ok.sum(), (~ok).sum(), out / "skipped.csv"
        )
        return report
    info = pd.DataFrame([r for r in results if "error" not in r], index=table.index[ok])
    table = pd.concat([table[ok], info], axis=1)
    table["split"] = ""
    for source in table["source"].unique():  # each dataset is split over its own patients
        rows = table["source"] == source
        table.loc[rows, "split"] = patient_split(table[rows], cfg.split_fractions, cfg.split_seed)
    balanced = {}
    for source, labels in (
        ("embed", {"birads": "birads", "density": "density"}),
        ("rsna", {"cancer": "cancer"}),
    ):
        sub = table[table["source"] == source]
        if len(sub):
            balanced[source] = write_splits(sub, out / "splits" / source, labels, seed=cfg.balanced_seed)
            report["images"][source] = {s: int((sub["split"] == s).sum()) for s in ("train", "val", "test")}
    table.to_csv(out / "table.csv", index=False)
    legend_table(legend).to_csv(out / "legend.csv", index=False)
    report.update(
        n_images=int(len(table)),
        n_skipped=int((~ok).sum()),
        skipped=skipped["dicom_path"].tolist(),
        balanced_test=balanced,
    )
    (out / "prepare_report.json").write_text(json.dumps(report, indent=2))
    if (~ok).any():
        log.warning("prepare: %d image(s) skipped, listed in %s", int((~ok).sum()), out / "skipped.csv")
    log.info("prepare: %d images cached in %s", len(table), out)
    return report


def cached_roi_boxes(row: Any) -> list[tuple[float, float, float, float]]:
    """A prepared row's ``roi_coords`` (DICOM pixels) mapped into its cached image.

    ``(y - crop_y0) * scale`` and ``(x - crop_x0) * scale``, clipped to the cached image; boxes that
    fall outside the crop are dropped. Returns ``(ymin, xmin, ymax, xmax)`` floats.
    """
    from medlearn.mama.data.tables import parse_roi_coords

    s, y0, x0 = float(row["scale"]), float(row["crop_y0"]), float(row["crop_x0"])
    h, w = (float(row["crop_y1"]) - y0) * s, (float(row["crop_x1"]) - x0) * s
    out = []
    for a, b, c, d in parse_roi_coords(row["roi_coords"]):
        box = (max((a - y0) * s, 0.0), max((b - x0) * s, 0.0), min((c - y0) * s, h), min((d - x0) * s, w))
        if box[2] > box[0] and box[3] > box[1]:
            out.append(box)
    return out
