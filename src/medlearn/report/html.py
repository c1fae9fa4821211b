"""A self-contained HTML report: sections of text, tables and images (PNG embedded as base64).

Example:
    >>> rep = Report("demo")
    >>> sec = rep.section("Results", "What was run.")
    >>> sec.table([{"n": 8, "PSNR": 31.2}], caption="per n")
    >>> "<table" in rep.render()
    True
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #357}h2{color:#357;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#eef}td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:.5em;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}nav a{margin-right:1em}
.note{color:#555;font-size:.9em}pre{background:#f6f6f6;padding:.5em;overflow-x:auto}
"""

# After load, record on <body> how many images and sections rendered and which images failed, so a
# headless browser (tests/report/test_browser.py) can check the page without a driver.
_STATUS_JS = """
window.addEventListener('load', function () {
  var imgs = document.images, bad = [];
  for (var i = 0; i < imgs.length; i++) {
    if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) { bad.push(imgs[i].alt); }
  }
  var b = document.body;
  b.setAttribute('data-images', String(imgs.length));
  b.setAttribute('data-broken', bad.join('|'));
  b.setAttribute('data-sections', String(document.querySelectorAll('section').length));
  b.setAttribute('data-ready', '1');
});
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


@dataclass
class Section:
    """One section of a :class:`Report`; add blocks in display order."""

    title: str
    anchor: str
    blocks: list[str] = field(default_factory=list)

    def text(self, text: str) -> Section:
        """A paragraph of plain text (escaped)."""
        self.blocks.append(f"<p>{html.escape(text)}</p>")
        return self

    def html(self, raw: str) -> Section:
        """Raw HTML (trusted, produced by medlearn)."""
        self.blocks.append(raw)
        return self

    def code(self, text: str) -> Section:
        self.blocks.append(f"<pre>{html.escape(text)}</pre>")
        return self

    def table(self, rows: Sequence[Mapping[str, Any]] | Any, caption: str = "") -> Section:
        """A table from a list of dicts (keys = columns) or a pandas DataFrame."""
        if hasattr(rows, "to_dict"):
            rows = rows.to_dict(orient="records")
        rows = list(rows)
        if not rows:
            self.blocks.append(f"<p class='note'>{html.escape(caption)}: (empty)</p>")
            return self
        cols: list[str] = []
        for r in rows:
            cols.extend(c for c in r if c not in cols)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows
        )
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.blocks.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def image(self, path: str | Path, caption: str = "", width: int | None = None) -> Section:
        """Embed a PNG/JPEG/SVG file as a data URI so the report is one self-contained file.

        Raises:
            FileNotFoundError: when ``path`` does not exist.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"report image '{path}' does not exist")
        mime = {
            ".png": "image/png",
            ".jpg": "image/jpeg",
            ".jpeg": "image/jpeg",
            ".svg": "image/svg+xml",
        }.get(path.suffix.lower(), "application/octet-stream")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        style = f" style='width:{width}px'" if width else ""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(
            f"<figure><img{style} alt='{html.escape(caption or path.name)}' src='data:{mime};base64,{data}'>{cap}</figure>"
        )
        return self


class Report:
    """An HTML report assembled from sections; :meth:`write` produces one self-contained file."""

    def __init__(self, title: str = "medlearn report") -> None:
        self.title = title
        self.sections: list[Section] = []

    def section(self, title: str, intro: str = "") -> Section:
        """Start (or return the existing) section called ``title``."""
        for s in self.sections:
            if s.title == title:
                return s
        anchor = "".join(ch if ch.isalnum() else "-" for ch in title.lower()).strip("-")
        sec = Section(title, anchor)
        if intro:
            sec.text(intro)
        self.sections.append(sec)
        return sec

    def render(self) -> str:
        nav = " ".join(f"<a href='#{s.anchor}'>{html.escape(s.title)}</a>" for s in self.sections)
        body = "".join(
            f"<section id='{s.anchor}'><h2>{html.escape(s.title)}</h2>{''.join(s.blocks)}</section>"
            for s in self.sections
        )
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        return (
            f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
            f"<p class='note'>generated {stamp}</p><nav>{nav}</nav>{body}<script>{_STATUS_JS}</script></body></html>"
        )

    def write(self, path: str | Path) -> Path:
        """Write the report atomically to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        tmp.replace(path)
        return path
