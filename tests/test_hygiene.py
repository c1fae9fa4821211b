"""Source hygiene the style guide asks for, checked on every file of src/medlearn.

No `.cuda()` (devices come from the accelerator or the input), no autograd anomaly detection, no
`print(` outside the CLI modules and report writers, no absolute user paths, no token-like strings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "medlearn"
FILES = sorted(SRC.rglob("*.py"))

RULES = {
    "a .cuda() call (use accelerator.device / x.device)": re.compile(r"\.cuda\(\)"),
    "autograd anomaly detection": re.compile(r"set_detect_anomaly"),
    "an absolute user path": re.compile(r"""["'](/home/|/Users/|/work/|/scratch/|C:\\\\)"""),
    "a token-like string": re.compile(r"""["'](hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9]{20,})["']"""),
}
PRINT = re.compile(r"(?<![\w.])print\(")


def _may_print(path: Path) -> bool:
    return path.name.startswith("cli") or "report" in path.relative_to(SRC).parts


def test_there_are_files_to_check():
    assert len(FILES) > 50


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_source_file_hygiene(path):
    text = path.read_text()
    for what, rx in RULES.items():
        m = rx.search(text)
        assert m is None, f"{path}: {what}: {m.group(0)!r}"
    if not _may_print(path):
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith((">>>", "#")))
        m = PRINT.search(code)
        assert m is None, f"{path}: print( outside cli*.py / report/ (use logging)"


def test_rules_catch_violations():
    """The rules are not vacuous: each one matches a planted example."""
    samples = {
        "a .cuda() call (use accelerator.device / x.device)": "x = x.cuda()",
        "autograd anomaly detection": "torch.autograd.set_detect_anomaly(True)",
        "an absolute user path": "root = '/home/me/data'",
        "a token-like string": "token = 'hf_abcdefghijklmnopqrstuvwxyz'",
    }
    for what, sample in samples.items():
        assert RULES[what].search(sample), what
    assert PRINT.search("print('x')") and not PRINT.search("self.print_help()")
