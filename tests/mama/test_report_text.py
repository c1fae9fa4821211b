"""Structured reports: exact text, masking frequencies, separators, zero-shot prompts."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from medlearn.mama.data.report_text import RSNA_PROMPTS, ReportBuilder
from medlearn.mama.data.tables import merge_embed

ROW = {
    "study_description": "MG Screening Bilateral",
    "asses": "S",
    "tissueden": 3,
    "age": 61.7,
    "race": "Caucasian or White",
    "ethnicity": "Hispanic or Latino",
    "laterality": "L",
    "view": "MLO",
    "image_type": "2D",
    "massshape": "X",
    "massdens": "+",
    "calcfind": "P",
    "calcdistri": "G",
}
EXPECTED = (
    "Procedure reported: MG Screening Bilateral. "
    "Reason for procedure: screening. "
    "Patient info: race Caucasian or White, ethnicity Hispanic or Latino, age 61. "
    "Image info: 2D full-field digital mammogram, side left, view mediolateral oblique. "
    "Breast composition: the breasts are heterogeneously dense, which could obscure small masses. "
    "Dense tissue may lower the sensitivity of mammography. "
    "Findings: suspicious abnormality, biopsy should be considered. "
    "There is an irregular mass of high density. "
    "There are punctate calcifications in a grouped distribution. "
    "Impressions: BI-RADS Category 4: Suspicious. "
    "Overall Assessment: Suspicious."
)


def test_exact_report_text():
    assert ReportBuilder().build(ROW) == EXPECTED


def test_ethnicity_other_than_hispanic_and_missing_fields():
    row = dict(ROW, ethnicity="Unknown", age=float("nan"), race="", asses="N", tissueden=1)
    for k in ("massshape", "massdens", "calcfind", "calcdistri"):
        row[k] = ""
    text = ReportBuilder().build(row)
    assert "Patient info: race unknown, ethnicity Non-Hispanic or Latino, age unknown." in text
    assert text.endswith(
        "Breast composition: the breasts are almost entirely fatty. Findings: no significant findings. "
        "Impressions: BI-RADS Category 1: Negative. Overall Assessment: Negative."
    )
    # a missing ethnicity reads "Non-Hispanic or Latino", as in the reference (not "unknown")
    for missing in ("", None, float("nan")):
        assert ", ethnicity Non-Hispanic or Latino," in ReportBuilder().build(dict(row, ethnicity=missing))


@pytest.mark.parametrize(
    ("description", "reason"),
    [
        ("MG Screening Bilateral", "screening"),
        ("MG Screen Bilat w/Tomo/CAD Stnd Protocol", "screening"),
        ("MG Diagnostic Mammo Bilateral", "diagnostic"),
        ("diagnostic after screening recall", "screening"),  # "screen" is tested first, as the reference
        ("MG Specimen Radiograph", "unknown"),  # neither: prepare drops such images (reference)
    ],
)
def test_reason_for_procedure(description, reason):
    text = ReportBuilder().build(dict(ROW, study_description=description))
    assert f"Reason for procedure: {reason}." in text


@pytest.mark.parametrize(
    ("codes", "mass", "calc"),
    [
        ({"massshape": "X", "massdens": "+"}, "There is an irregular mass of high density.", None),
        ({"massshape": "X", "massdens": ""}, None, None),  # shape only: no sentence (reference)
        ({"massshape": "", "massdens": "-"}, None, None),  # density only: no sentence
        ({"massshape": "X", "massdens": "?"}, None, None),  # a code the legend lacks counts as missing
        (
            {"calcfind": "U", "calcdistri": "S"},
            None,
            "There are suture calcifications in a segmental distribution.",
        ),
        ({"calcfind": "P", "calcdistri": ""}, None, None),
        ({"calcfind": "", "calcdistri": "G"}, None, None),
    ],
)
def test_finding_sentences_need_both_codes(codes, mass, calc):
    row = {**ROW, "massshape": "", "massdens": "", "calcfind": "", "calcdistri": "", **codes}
    sentences = ReportBuilder().finding_sentences(row)
    assert sentences == " ".join(s for s in (mass, calc) if s)


def _clinical(rows):
    base = {
        "empi_anon": "p1",
        "acc_anon": "e1",
        "tissueden": "2",
        "age_at_study": "50",
        "RACE_DESC": "Asian",
        "ETHNIC_GROUP_DESC": "Non-Hispanic or Latino",
        "path_severity": "",
    }
    return pd.DataFrame([{**base, **r} for r in rows]).astype(str).replace({"": np.nan})


def _metadata(lats=("L", "R")):
    return pd.DataFrame(
        [
            {
                "empi_anon": "p1",
                "acc_anon": "e1",
                "anon_dicom_path": f"d/{lat}.dcm",
                "StudyDescription": "MG Screening Bilateral",
                "FinalImageType": "2D",
                "ImageLateralityFinal": lat,
                "ViewPosition": "CC",
            }
            for lat in lats
        ]
    )


def test_reports_of_bilateral_and_multi_finding_exam():
    """Left: two findings (mass S, calcs B) -> highest (S) with the mass codes; right: the bilateral N row."""
    clinical = _clinical(
        [
            {"side": "L", "asses": "S", "massshape": "O", "massdens": "="},
            {"side": "L", "asses": "B", "calcfind": "U", "calcdistri": "G"},
            {"side": "B", "asses": "N"},
        ]
    )
    table, dropped = merge_embed(_metadata(), clinical)
    rb = ReportBuilder()
    left = rb.build(table[table["laterality"] == "L"].iloc[0].to_dict())
    right = rb.build(table[table["laterality"] == "R"].iloc[0].to_dict())
    assert (
        "Findings: suspicious abnormality, biopsy should be considered. There is an oval mass of equal density. Imp"
        in left
    )
    assert "calcifications" not in left and "side left, view craniocaudal." in left
    assert right.endswith(
        "Breast composition: there are scattered areas of fibroglandular density. Findings: no significant findings. "
        "Impressions: BI-RADS Category 1: Negative. Overall Assessment: Negative."
    )
    assert "side right, view craniocaudal." in right


def test_birads0_rule_in_report():
    """Candidates 0 (recall) and 2 (benign): the BI-RADS-0 row wins although 2 is higher."""
    clinical = _clinical(
        [
            {"side": "R", "asses": "B", "calcfind": "H", "calcdistri": "D"},
            {"side": "R", "asses": "A", "massshape": "R", "massdens": "-"},
        ]
    )
    table, _ = merge_embed(_metadata(("R",)), clinical)
    text = ReportBuilder().build(table.iloc[0].to_dict())
    assert "Findings: additional imaging evaluation is needed. There is a round mass of low density." in text
    assert "Impressions: BI-RADS Category 0: Incomplete - Need Additional Imaging Evaluation." in text


def test_masking_frequencies():
    rb = ReportBuilder()
    parts = rb.parts(ROW)
    rng = np.random.default_rng(0)
    n = 4000
    pats = {
        "race": "race unknown,",
        "ethnicity": "ethnicity unknown,",
        "age": "age unknown.",
        "image_type": "Image info: unknown full-field",
        "side": "side unknown,",
        "view": "view unknown.",
    }
    counts = dict.fromkeys(pats, 0)
    both = 0
    for _ in range(n):
        text = rb.render(parts, mask_prob=0.8, rng=rng)
        hit = {k: p in text for k, p in pats.items()}
        for k, v in hit.items():
            counts[k] += v
        both += hit["age"] and hit["view"]
        assert text.startswith("Procedure reported: MG Screening Bilateral. Reason for procedure: screening.")
        assert text.endswith(EXPECTED[EXPECTED.index("Breast composition") :])
    tol = 4 * np.sqrt(0.8 * 0.2 / n)
    for k, c in counts.items():
        assert abs(c / n - 0.8) < tol, (k, c / n)
    assert abs(both / n - 0.64) < 4 * np.sqrt(0.64 * 0.36 / n)  # independent fields
    assert rb.render(parts, mask_prob=0.0, rng=rng) == EXPECTED


def test_separators_where_full_stops_and_semicolons_were():
    """Values containing '.' or ';' are cleaned, so the separator count equals the template's boundaries."""
    row = dict(ROW, study_description="MG Scr. Bilat; tomo", race="A.B")
    text = ReportBuilder().build(row)
    sep = re.sub(r"[.;]", " [SEP]", text)
    # boundaries: 2 (segments 1-2) + 1 (patient) + 1 (image) + 2 (density) + 3 (findings) + 1 (impression) + 1 (assessment)
    assert sep.count("[SEP]") == 11
    pieces = [p.strip() for p in sep.split("[SEP]") if p.strip()]
    assert pieces[0] == "Procedure reported: MG Scr Bilat tomo"
    assert pieces[2] == "Patient info: race A B, ethnicity Hispanic or Latino, age 61"
    assert pieces[-1] == "Overall Assessment: Suspicious"


def test_plain_report_has_the_reference_sentence_count():
    """No extra sentences (density A/B, no finding codes): 8 separators, as the reference's 8 segments
    (procedure; reason; patient info. image info. composition. findings. impression. assessment.)."""
    row = {
        **ROW,
        "tissueden": 2,
        "asses": "N",
        "massshape": "",
        "massdens": "",
        "calcfind": "",
        "calcdistri": "",
    }
    text = ReportBuilder().build(row)
    assert text.count(".") + text.count(";") == 8
    for masked in (0.0, 1.0):  # masking never changes the sentence count
        rb = ReportBuilder()
        t = rb.render(rb.parts(row), mask_prob=masked, rng=np.random.default_rng(0))
        assert t.count(".") + t.count(";") == 8


def test_zero_shot_prompts():
    rb = ReportBuilder()
    birads = rb.zero_shot_prompts(ROW, "birads")
    density = rb.zero_shot_prompts(ROW, "density")
    assert len(birads) == 7 and len(density) == 4
    meta = EXPECTED[: EXPECTED.index(" Breast composition")]
    assert all(p.startswith(meta) for p in birads + density)
    assert birads[5].endswith(
        "Findings: highly suggestive of malignancy, biopsy is recommended. Impressions: BI-RADS Category 5: "
        "Highly Suggestive of Malignancy. Overall Assessment: Highly Suggestive of Malignancy."
    )
    assert density[0].endswith("Breast composition: the breasts are almost entirely fatty.")
    assert density[3].endswith("extremely dense. Dense tissue may lower the sensitivity of mammography.")
    assert len(RSNA_PROMPTS) == 2
    with pytest.raises(ValueError, match="zero-shot task"):
        rb.zero_shot_prompts(ROW, "cancer")


def test_legend_table_overrides_codes():
    legend = pd.DataFrame(
        {
            "Header in export": ["massshape", "massdens"],
            "Description": ["x", "y"],
            "Code": ["Z ", "~"],
            "Meaning": ["zigzag.", "wavy density  "],
        }
    )
    row = dict(ROW, massshape="Z", massdens="~", calcfind="", calcdistri="")
    assert "There is a zigzag mass of wavy density." in ReportBuilder(legend).build(row)
