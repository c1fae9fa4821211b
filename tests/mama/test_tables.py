"""EMBED / RSNA readers: column validation, row-selection rule, 2D filter and drop counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medlearn.errors import DataError
from medlearn.mama.data.tables import (
    CLINICAL_COLUMNS,
    METADATA_COLUMNS,
    RSNA_COLUMNS,
    legend_table,
    parse_roi_coords,
    read_csv_checked,
    read_embed,
    read_legend,
    read_rsna,
    select_clinical_rows,
)


def _clin(rows):
    base = {"empi_anon": "p", "acc_anon": "e", "tissueden": "2"}
    return pd.DataFrame([{**base, **r} for r in rows])


@pytest.mark.parametrize(
    ("rows", "lat", "expected_asses"),
    [
        ([{"side": "L", "asses": "B"}, {"side": "B", "asses": "S"}], "L", "B"),  # exact side beats bilateral
        ([{"side": "L", "asses": "B"}, {"side": "B", "asses": "S"}], "R", "S"),  # bilateral fallback
        ([{"side": "R", "asses": "P"}, {"side": "R", "asses": "M"}, {"side": "R", "asses": "B"}], "R", "M"),
        (
            [{"side": "R", "asses": "B"}, {"side": "R", "asses": "A"}, {"side": "R", "asses": "N"}],
            "R",
            "A",
        ),  # 0 rule
        ([{"side": "R", "asses": "A"}, {"side": "R", "asses": "S"}], "R", "S"),  # 0 rule only when all <= 2
        ([{"side": "", "asses": "N"}], "L", "N"),  # empty side counts as bilateral
    ],
)
def test_row_selection_rule(rows, lat, expected_asses):
    sel = select_clinical_rows(_clin(rows).replace({"": np.nan}))
    got = sel[(sel["acc_anon"] == "e") & (sel["laterality"] == lat)]
    assert len(got) == 1
    assert got["asses"].iloc[0] == expected_asses


def test_no_candidate_gives_no_row():
    sel = select_clinical_rows(_clin([{"side": "L", "asses": "N"}]))
    assert set(sel["laterality"]) == {"L"}


def _write_embed(tmp_path, meta_rows, clin_rows):
    pd.DataFrame(meta_rows).to_csv(tmp_path / "EMBED_OpenData_metadata.csv", index=False)
    pd.DataFrame(clin_rows).to_csv(tmp_path / "EMBED_OpenData_clinical.csv", index=False)
    legend_table().to_csv(tmp_path / "EMBED_OpenData_legend.csv", index=False)


def test_read_embed_filters_and_counts(tmp_path):
    def m(acc, lat, typ="2D", desc="MG Screening Bilateral", view="CC"):
        return {
            "empi_anon": "p" + acc,
            "acc_anon": acc,
            "anon_dicom_path": f"/nas/x/{acc}_{lat}_{view}_{typ}.dcm",
            "StudyDescription": desc,
            "FinalImageType": typ,
            "ImageLateralityFinal": lat,
            "ViewPosition": view,
            "spot_mag": "",
            "study_date_anon": "2020-01-01",
            "ROI_coords": "",
        }

    def c(acc, side, asses, dens="3"):
        return {
            "empi_anon": "p" + acc,
            "acc_anon": acc,
            "side": side,
            "asses": asses,
            "tissueden": dens,
            "path_severity": "0" if asses == "M" else "",
            "study_date_anon": "2020-01-01",  # columns shared with the metadata must not clash
            "StudyDescription": "ignored",
        }

    meta = [
        m("1", "L"),
        m("1", "L", view="MLO"),
        m("1", "R"),
        m("1", "L", typ="cview"),
        m("2", "L", desc=""),
        m("3", "R"),
        m("4", "L"),
        m("5", "L"),
    ]
    clin = [c("1", "L", "M"), c("1", "B", "N"), c("2", "B", "N"), c("3", "R", "N", dens=""), c("4", "L", "")]
    _write_embed(tmp_path, meta, clin)
    table, dropped, legend = read_embed(tmp_path, strip_prefix="/nas/x")
    assert dropped == {
        "not_2d": 1,
        "no_laterality": 0,
        "no_clinical_row": 1,
        "missing_procedure": 1,
        "missing_density": 1,
        "missing_birads": 1,
    }
    assert len(table) == 3
    left = table[(table["laterality"] == "L")]
    assert set(left["birads"]) == {5} and set(left["cancer"]) == {1}
    assert table[table["laterality"] == "R"]["birads"].tolist() == [1]
    assert set(table["density"]) == {2}
    assert table["dicom_path"].str.startswith("1_").all()
    assert legend["massshape"]["X"] == "irregular"


@pytest.mark.parametrize("which", ["metadata", "clinical"])
def test_readers_reject_missing_columns(tmp_path, which):
    meta = {c: ["x"] for c in METADATA_COLUMNS}
    clin = {c: ["x"] for c in CLINICAL_COLUMNS}
    drop = {"metadata": ("ViewPosition", "acc_anon"), "clinical": ("tissueden", "asses")}[which]
    target = meta if which == "metadata" else clin
    for col in drop:
        del target[col]
    _write_embed(tmp_path, pd.DataFrame(meta), pd.DataFrame(clin))
    with pytest.raises(DataError) as err:
        read_embed(tmp_path)
    msg = str(err.value)
    assert which in msg and all(col in msg for col in drop)


def test_rsna_reader_and_bad_table(tmp_path):
    rows = pd.DataFrame({c: ["0", "0"] for c in RSNA_COLUMNS})
    rows["patient_id"] = ["7", "7"]
    rows["image_id"] = ["11", "12"]
    rows["laterality"] = ["L", "R"]
    rows["view"] = ["CC", "MLO"]
    rows["cancer"] = ["1", "0"]
    rows["BIRADS"] = ["0", ""]
    rows["density"] = ["C", ""]
    rows.to_csv(tmp_path / "train.csv", index=False)
    t = read_rsna(tmp_path / "train.csv")
    assert t["dicom_path"].tolist() == ["train_images/7/11.dcm", "train_images/7/12.dcm"]
    assert (
        t["cancer"].tolist() == [1, 0]
        and t["birads"].tolist() == [0, -1]
        and t["density"].tolist() == [2, -1]
    )
    rows.drop(columns=["cancer", "view"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['view', 'cancer'\]"):
        read_rsna(tmp_path / "bad.csv")


def test_legend_and_missing_file(tmp_path):
    legend_table({"calcfind": {"P": "pleomorphic"}}).to_csv(tmp_path / "l.csv", index=False)
    assert read_legend(tmp_path / "l.csv") == {"calcfind": {"P": "pleomorphic"}}
    pd.DataFrame({"Code": ["P"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="Header in export"):
        read_legend(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="not found"):
        read_csv_checked(tmp_path / "none.csv", ["a"])


def test_parse_roi_coords():
    assert parse_roi_coords("[[1, 2, 3, 4], [5, 6, 7, 8]]") == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert parse_roi_coords("((1, 2, 3, 4),)") == [(1, 2, 3, 4)]
    assert parse_roi_coords("") == []
    with pytest.raises(DataError):
        parse_roi_coords("[[1, 2")


def test_find_embed_tables(tmp_path):
    from medlearn.mama.data.tables import find_embed_tables

    (tmp_path / "tables").mkdir()
    for name in ("EMBED_OpenData_metadata_reduced.csv", "EMBED_OpenData_clinical_reduced.csv",
                 "AWS_Open_Data_Clinical_Legend.csv"):  # fmt: skip
        (tmp_path / "tables" / name).write_text("a\n")
    found = find_embed_tables(tmp_path)
    assert found["clinical"].name == "EMBED_OpenData_clinical_reduced.csv"
    assert found["legend"].name == "AWS_Open_Data_Clinical_Legend.csv"
    (tmp_path / "tables" / "EMBED_OpenData_metadata_reduced.csv").unlink()
    with pytest.raises(DataError, match="metadata"):
        find_embed_tables(tmp_path)
    with pytest.raises(DataError, match="not found"):
        find_embed_tables(tmp_path / "nope")
