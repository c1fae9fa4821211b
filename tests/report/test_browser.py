"""Render a report in headless Chromium and check that every section and image loads.

Chromium comes from Debian's ``chromium`` package.  When it is missing, the test installs it with
apt-get (root only); where that is impossible it is skipped with the reason.
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


def find_or_install_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs root + apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900
    )
    path = shutil.which("chromium")
    if proc.returncode != 0 or path is None:
        pytest.skip(f"apt-get could not install chromium: {proc.stderr.decode()[-300:]}")
    return path


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
    chromium = find_or_install_chromium()
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
    chromium = find_or_install_chromium()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    rep = Report("broken")
    rep.section("Only").image(bad, caption="bad image")
    status = body_status(render_dom(chromium, rep.write(tmp_path / "r.html"), tmp_path))
    assert status["broken"] == "bad image"
