"""Figures and the self-contained HTML report that every task adds a section to."""

from medlearn.report.figures import save_figure
from medlearn.report.html import Report, Section

__all__ = ["Report", "Section", "save_figure"]
