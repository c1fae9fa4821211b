"""EMBED / RSNA readers: column validation, row-selection rule, 2D filter and drop counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medlearn.errors import DataError
from medlearn.mama.data.legend import DEFAULT_LEGEND, write_published_legend
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


@pytest.mark.parametrize("fallback", ["exam", "none"])
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
        ([{"side": "", "asses": "N"}], "L", "N"),  # the exam's only row (empty side)
        # an invalid letter before the valid ones: the reference's arg-max over the filtered list
        # (2 -> S) would index the unfiltered rows and return the B row; the highest valid is S
        ([{"side": "R", "asses": "X"}, {"side": "R", "asses": "B"}, {"side": "R", "asses": "S"}], "R", "S"),
    ],
)
def test_row_selection_rule(rows, lat, expected_asses, fallback):
    sel = select_clinical_rows(_clin(rows).replace({"": np.nan}), fallback)
    got = sel[(sel["acc_anon"] == "e") & (sel["laterality"] == lat)]
    assert len(got) == 1
    assert got["asses"].iloc[0] == expected_asses


@pytest.mark.parametrize(
    ("rows", "lat", "exam", "none"),
    [
        # no left or bilateral row: the reference falls back to every row of the exam
        ([{"side": "R", "asses": "S"}], "L", "S", None),
        # an empty side is not "B" for the reference (fallback to all rows, highest wins) but is
        # bilateral for the EMBED README rule
        ([{"side": "R", "asses": "S"}, {"side": "", "asses": "N"}], "L", "S", "N"),
        ([{"side": "B", "asses": "B"}, {"side": "", "asses": "S"}], "L", "B", "S"),
    ],
)
def test_row_selection_fallback(rows, lat, exam, none):
    for fallback, expected in (("exam", exam), ("none", none)):
        sel = select_clinical_rows(_clin(rows).replace({"": np.nan}), fallback)
        got = sel.loc[sel["laterality"] == lat, "asses"].tolist()
        assert got == ([] if expected is None else [expected]), fallback
    with pytest.raises(ValueError, match="fallback"):
        select_clinical_rows(_clin(rows), "nearest")


def _write_embed(tmp_path, meta_rows, clin_rows):
    pd.DataFrame(meta_rows).to_csv(tmp_path / "EMBED_OpenData_metadata.csv", index=False)
    pd.DataFrame(clin_rows).to_csv(tmp_path / "EMBED_OpenData_clinical.csv", index=False)
    write_published_legend(tmp_path / "AWS_Open_Data_Clinical_Legend.csv")


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
        m("6", "L", desc="MG Specimen Radiograph"),  # neither screening nor diagnostic
        m("7", "R", desc="MG Diagnostic Right"),
    ]
    clin = [c("1", "L", "M"), c("1", "B", "N"), c("2", "B", "N"), c("3", "R", "N", dens=""), c("4", "L", "")]
    clin += [c("6", "B", "N"), c("7", "R", "B", dens="5")]  # tissueden 5: normal male
    _write_embed(tmp_path, meta, clin)
    table, dropped, legend = read_embed(tmp_path, strip_prefix="/nas/x")
    assert dropped == {
        "not_2d": 1,
        "no_laterality": 0,
        "no_clinical_row": 1,
        "missing_procedure": 1,
        "not_screening_or_diagnostic": 1,
        "missing_density": 1,
        "missing_birads": 1,
    }
    assert len(table) == 4
    left = table[(table["laterality"] == "L")]
    assert set(left["birads"]) == {5} and set(left["cancer"]) == {1}
    assert table[table["laterality"] == "R"]["birads"].tolist() == [1, 2]
    assert table["density"].tolist() == [2, 2, 2, -1]  # male: no density class
    assert table["tissueden"].tolist() == [3, 3, 3, 5]
    assert table["dicom_path"].str.startswith(("1_", "7_")).all()
    assert legend["massshape"]["X"] == "irregular" and legend["calcfind"]["P"] == "punctate"


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
    legend_table({"calcfind": {"K": "pleomorphic"}}).to_csv(tmp_path / "l.csv", index=False)
    assert read_legend(tmp_path / "l.csv") == {"calcfind": {"K": "pleomorphic"}}
    pd.DataFrame({"Code": ["P"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="Header in export"):
        read_legend(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="not found"):
        read_csv_checked(tmp_path / "none.csv", ["a"])


# The published legend's layout, with our own rows: BOM, the "Discription" spelling, codes and
# meanings padded with trailing spaces, a quoted cell with commas, headers the reports do not use
# and rows without a code.
PUBLISHED_STYLE = (
    "\ufeffHeader in export,Discription,Code,Meaning\n"
    'sprocs,"Procedure code (may carry a side, e.g. -L)",XY12      ,"MAMMO, BOTH SIDES, DIGITAL      "\n'
    "study,Exam date.,,\n"
    "massshape,Mass Shape,A         ,Architectural distortion                \n"
    "massshape,Mass Shape,X,Irregular\n"
    "massdens,Mass Density,+     ,High density   \n"
    "calcfind,Calcification Finding,P,Punctate      \n"
    "calcfind,Calcification Finding,U         ,Suture\n"
    "calcdistri,Calcification Distribution,G,Grouped\n"
    "side,Side,B,Both\n"
)


def test_published_legend_format_is_read(tmp_path):
    path = tmp_path / "AWS_Open_Data_Clinical_Legend.csv"
    path.write_bytes(PUBLISHED_STYLE.encode("utf-8"))
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert read_legend(path) == {
        "sprocs": {"XY12": "MAMMO, BOTH SIDES, DIGITAL"},
        "massshape": {"A": "Architectural distortion", "X": "Irregular"},
        "massdens": {"+": "High density"},
        "calcfind": {"P": "Punctate", "U": "Suture"},
        "calcdistri": {"G": "Grouped"},
        "side": {"B": "Both"},
    }


def test_published_legend_writer_round_trip(tmp_path):
    path = write_published_legend(
        tmp_path / "l.csv", {"calcfind": {"P": "punctate"}}, [("side", "Side", "B", "both")]
    )
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfHeader in export,Discription,Code,Meaning")
    assert b"P         ,punctate" + b" " * 42 in raw  # padded to 10 and 50 characters
    assert read_legend(path) == {"calcfind": {"P": "punctate"}, "side": {"B": "both"}}


def test_default_legend_agrees_with_published_meanings():
    """Every built-in code against the meaning the published EMBED legend gives it (our wording)."""
    published = {
        "massshape": {"G": "generic", "R": "round", "O": "oval", "X": "irregular", "A": "architectural distortion",
                      "Q": "questioned architectural distortion", "F": "focal asymmetry", "S": "asymmetry",
                      "B": "global asymmetry", "V": "developing asymmetry", "N": "intramammary lymph node",
                      "Y": "lymph node", "T": "asymmetric tubular structure or solitary dilated duct"},
        "massmargin": {"D": "circumscribed", "U": "obscured", "M": "microlobulated", "I": "indistinct",
                       "S": "spiculated"},
        "massdens": {"+": "high density", "=": "equal density", "-": "low density", "0": "fat containing"},
        "calcfind": {"A": "amorphous", "9": "benign", "H": "coarse heterogeneous", "C": "coarse popcorn-like",
                     "D": "dystrophic", "E": "rim", "F": "fine linear", "B": "fine linear branching",
                     "G": "generic", "I": "fine pleomorphic", "L": "large rod-like", "M": "milk of calcium",
                     "J": "oil cyst", "K": "pleomorphic", "P": "punctate", "R": "round", "S": "skin",
                     "O": "lucent-centered", "U": "suture", "V": "vascular", "Q": "coarse"},
        "calcdistri": {"G": "grouped", "S": "segmental", "R": "regional", "D": "diffuse", "L": "linear",
                       "C": "clustered"},
    }  # fmt: skip
    assert DEFAULT_LEGEND == published
    # the codes the issue named
    assert (
        DEFAULT_LEGEND["massshape"]["A"] == "architectural distortion"
        and "L" not in DEFAULT_LEGEND["massshape"]
    )
    assert DEFAULT_LEGEND["calcfind"]["P"] == "punctate" and DEFAULT_LEGEND["calcfind"]["U"] == "suture"


def test_csv_reader_strips_bom_and_column_padding(tmp_path):
    (tmp_path / "t.csv").write_bytes("\ufeff acc_anon ,side\n1,B\n".encode())
    df = read_csv_checked(tmp_path / "t.csv", ["acc_anon", "side"])
    assert list(df.columns) == ["acc_anon", "side"] and df["acc_anon"].tolist() == ["1"]


def test_parse_roi_coords():
    assert parse_roi_coords("[[1, 2, 3, 4], [5, 6, 7, 8]]") == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert parse_roi_coords("((1, 2, 3, 4),)") == [(1, 2, 3, 4)]
    assert parse_roi_coords("[[[1165, 822, 1294, 1000]]]") == [(1165, 822, 1294, 1000)]  # datathon nesting
    assert parse_roi_coords("[1.4, 2, 3.6, 4]") == [(1, 2, 4, 4)]
    assert parse_roi_coords("") == [] and parse_roi_coords("()") == []
    with pytest.raises(DataError, match="not a list"):
        parse_roi_coords("[[1, 2")
    with pytest.raises(DataError, match="groups of four"):
        parse_roi_coords("[[1, 2, 3]]")


def test_find_embed_tables(tmp_path):
    from medlearn.mama.data.tables import find_embed_tables

    (tmp_path / "tables").mkdir()
    for name in ("EMBED_OpenData_metadata_reduced.csv", "EMBED_OpenData_clinical_reduced.csv",
                 "AWS_Open_Data_Clinical_Legend.csv"):  # fmt: skip
        (tmp_path / "tables" / name).write_text("a\n")
    (tmp_path / "tables" / "a_pathology_legend.csv").write_text("a\n")  # sorts first, not the clinical one
    found = find_embed_tables(tmp_path)
    assert found["clinical"].name == "EMBED_OpenData_clinical_reduced.csv"
    assert found["legend"].name == "AWS_Open_Data_Clinical_Legend.csv"
    (tmp_path / "tables" / "EMBED_OpenData_metadata_reduced.csv").unlink()
    with pytest.raises(DataError, match="metadata"):
        find_embed_tables(tmp_path)
    with pytest.raises(DataError, match="not found"):
        find_embed_tables(tmp_path / "nope")
