"""The HTML report is self-contained: tables rendered, images embedded as data URIs."""

from __future__ import annotations

import base64
import re

import matplotlib.pyplot as plt
import pytest

from medlearn.report import Report, save_figure


def test_report_embeds_images_and_tables(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure(fig, tmp_path / "fig.png")
    rep = Report("t")
    sec = rep.section("Results", "intro <b>escaped</b>")
    sec.table([{"n": 8, "psnr": 31.23456}, {"n": 16, "ssim": 0.9}], caption="per n")
    sec.image(png, caption="curve")
    assert rep.section("Results") is sec  # same title -> same section
    out = rep.write(tmp_path / "r" / "report.html")
    html = out.read_text()
    assert "&lt;b&gt;escaped" in html and "31.23" in html and "<th>ssim</th>" in html
    m = re.search(r"src='data:image/png;base64,([^']+)'", html)
    assert m and base64.b64decode(m.group(1)) == png.read_bytes()
    assert "href='#results'" in html and "id='results'" in html


def test_missing_image_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        Report().section("x").image(tmp_path / "nope.png")
