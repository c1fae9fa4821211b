"""``mama prepare`` when no image of a source can be read (issue 17, item 3).

A wrong or missing ``--strip-prefix`` / ``--embed-dicom-root`` makes every EMBED path miss its
file.  Formerly every image was skipped and the command exited 0 (also with ``--check-only``);
now it stops with one error naming both flags, and the same data with the right flags works.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medlearn.cli import main
from medlearn.errors import DataError
from medlearn.mama.data.prepare import PrepareConfig, prepare_dataset
from medlearn.mama.data.synth import SynthConfig, generate

NAS = "/mnt/NAS2/mammo/anon_dicom"


@pytest.fixture(scope="module")
def nas_embed(tmp_path_factory) -> Path:
    """A synthetic EMBED folder whose anon_dicom_path values carry a site's NAS mount, as the real ones do."""
    out = tmp_path_factory.mktemp("nas_embed")
    generate(out, SynthConfig(n_patients=2, n_rsna_patients=1, seed=3, long_side=64))
    meta_csv = next((out / "embed").glob("EMBED_OpenData_metadata*.csv"))
    meta = pd.read_csv(meta_csv, dtype=str)
    meta["anon_dicom_path"] = NAS + "/" + meta["anon_dicom_path"]
    meta.to_csv(meta_csv, index=False)
    return out


def _prepare(argv: list[str], capsys) -> tuple[int, str]:
    code = main(["mama", "prepare", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("check_only", [False, True], ids=["prepare", "check-only"])
def test_missing_strip_prefix_fails_naming_the_flags(nas_embed, tmp_path, capsys, check_only):
    extra = ["--check-only"] if check_only else []
    code, err = _prepare(["--embed", str(nas_embed / "embed"), "--out", str(tmp_path / "p"), *extra], capsys)
    assert code == 2
    assert "none of the" in err and "EMBED images could be read" in err
    assert "--strip-prefix=''" in err and "--embed-dicom-root" in err and "skipped.csv" in err
    assert not (tmp_path / "p" / "table.csv").exists()
    listed = pd.read_csv(tmp_path / "p" / "skipped.csv")["dicom_path"].tolist()
    assert listed and all(NAS in p for p in listed)  # every path that was tried, for the user to compare


def test_wrong_dicom_root_fails_and_right_flags_work(nas_embed, tmp_path, capsys):
    embed = str(nas_embed / "embed")
    common = ["--embed", embed, "--strip-prefix", NAS, "--long-side", "32"]
    code, err = _prepare([*common, "--embed-dicom-root", str(tmp_path), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and f"--embed-dicom-root={tmp_path}" in err
    code, err = _prepare([*common, "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "b" / "table.csv", dtype=str)
    meta = pd.read_csv(next(Path(embed).glob("EMBED_OpenData_metadata*.csv")), dtype=str)
    assert len(table) == (meta["FinalImageType"] == "2D").sum()  # every 2D image cached


def test_rsna_folder_without_images_fails(nas_embed, tmp_path):
    rsna = tmp_path / "rsna"
    rsna.mkdir()
    (rsna / "train.csv").write_bytes((nas_embed / "rsna" / "train.csv").read_bytes())
    with pytest.raises(DataError, match=r"none of the \d+ RSNA images could be read.*train_images"):
        prepare_dataset(tmp_path / "p", rsna_dir=rsna, cfg=PrepareConfig(check_only=True))


def test_some_unreadable_images_are_still_skips(nas_embed, tmp_path):
    """One source fully readable and the other partly: counted skips, no error (the former behaviour)."""
    rsna = nas_embed / "rsna"
    victim = next((rsna / "train_images").rglob("*.dcm"))
    saved = victim.read_bytes()
    try:
        victim.write_bytes(b"garbage" * 20)
        report = prepare_dataset(tmp_path / "p", rsna_dir=rsna, cfg=PrepareConfig(check_only=True))
        assert report["n_skipped"] == 1 and report["n_images"] >= 1
    finally:
        victim.write_bytes(saved)
