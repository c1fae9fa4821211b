"""Render a report in headless Chromium and check that every section and image loads.

Chromium is a system package (Debian's ``chromium``): ``make browser``, a prerequisite of
``make test``, installs it when it is missing; a test never installs anything.  Without it these
tests skip with the reason, except under ``make test`` (``MEDLEARN_REQUIRE_BROWSER=1``), where
they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from medlearn.report import Report, save_figure

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=5000",
]  # fmt: skip


def find_chromium() -> str:
    """Path of a Chromium/Chrome binary; skips (or, with ``MEDLEARN_REQUIRE_BROWSER=1``, fails) without one."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    reason = "chromium is not installed (`make browser` installs it; `make test` does so first)"
    if os.environ.get("MEDLEARN_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def render_dom(chromium: str, page: Path, tmp: Path) -> str:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def screenshot(chromium: str, page: Path, out: Path, tmp: Path) -> Path:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile2'}", f"--screenshot={out}",
           "--window-size=1280,2000", page.as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=180, check=True)
    return out


def body_status(dom: str) -> dict[str, str]:
    m = re.search(r"<body([^>]*)>", dom)
    assert m, "no <body> in the rendered DOM"
    return dict(re.findall(r'data-(\w+)="([^"]*)"', m.group(1)))


def test_report_renders_in_chromium(tmp_path):
    chromium = find_chromium()
    rep = Report("browser check")
    for title in ("First", "Second"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.imshow([[0, 1], [1, 0]])
        rep.section(title).text("hello").image(save_figure(fig, tmp_path / f"{title}.png"), caption=title)
    page = rep.write(tmp_path / "report.html")
    status = body_status(render_dom(chromium, page, tmp_path))
    assert status == {"images": "2", "broken": "", "sections": "2", "ready": "1"}


def test_broken_image_is_detected(tmp_path):
    """The check can fail: a page with an undecodable image reports it as broken."""
    chromium = find_chromium()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    rep = Report("broken")
    rep.section("Only").image(bad, caption="bad image")
    status = body_status(render_dom(chromium, rep.write(tmp_path / "r.html"), tmp_path))
    assert status["broken"] == "bad image"


def test_missing_browser_skips_alone_and_fails_under_make_test(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("MEDLEARN_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make browser"):
        find_chromium()
    monkeypatch.setenv("MEDLEARN_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="make browser"):
        find_chromium()
