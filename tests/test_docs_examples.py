"""Run the code blocks of the Python API page (docs/python_api.md) so the documentation cannot rot.

The ```python blocks are executed in order, in one namespace, in an empty folder (as a reader
pasting them into a notebook would), with the repository's presets.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    """The fenced ```python blocks of a markdown page, in order."""
    return BLOCK.findall(page.read_text())


def test_block_extraction() -> None:
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x + 1\n```\n"
    assert BLOCK.findall(text) == ["x = 1\n", "y = x + 1\n"]


def run_page(page: Path, folder: Path) -> None:
    """Execute the page's python blocks in order, in one namespace, with ``folder`` as working directory."""
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(python_blocks(page)):
        exec(compile(code, f"docs/{page.name} block {i + 1}", "exec"), namespace)  # noqa: S102


@pytest.fixture()
def one_thread_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(before)


def test_python_api_page_runs(one_thread_in: Path, capsys) -> None:
    assert len(python_blocks(DOCS / "python_api.md")) >= 6
    run_page(DOCS / "python_api.md", one_thread_in)
    out = capsys.readouterr().out
    # a few of the values the page states in its comments
    assert "['demo', 'paper', 'small', 'tiny']" in out
    assert "torch.Size([2, 2, 32, 32])" in out and "torch.Size([2, 1, 16, 16])" in out
    assert "valid presets: demo, paper, small, tiny" in out
    assert "(16, 16, 1) float32" in out and "True uint8 True" in out
    assert "(4, 32) (2, 32)" in out and "(4, 2) True" in out
    assert (one_thread_in / "out" / "SR_NAA.nii.gz").is_file()
    assert (one_thread_in / "out" / "Case01_mask.nii.gz").is_file()


def test_pretrained_weights_page_runs(one_thread_in: Path, capsys) -> None:
    run_page(DOCS / "pretrained_weights.md", one_thread_in)
    out = capsys.readouterr().out.split("\n")
    assert out[:5] == ["torch.Size([1, 32])", "causal gpt2", "bert encoder", "True", ""]


# --------------------------------------------------------------------------- troubleshooting page
def _literal_parts(node: ast.expr) -> list[str]:
    """The constant pieces of a message expression (str, f-string, or a + of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    if isinstance(node, ast.BinOp):
        return _literal_parts(node.left) + _literal_parts(node.right)
    return []


def raised_messages(src: Path) -> list[tuple[str, str]]:
    """(``file:line``, longest fixed piece of the message) of every ``raise DataError/ConfigError(...)``."""
    out = []
    for f in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            call = node.exc if isinstance(node, ast.Raise) else None
            if not (
                isinstance(call, ast.Call) and getattr(call.func, "id", "") in ("DataError", "ConfigError")
            ):
                continue
            parts = [p.strip(" :;,.'(") for p in (_literal_parts(call.args[0]) if call.args else [])]
            parts = [p for p in parts if len(p) >= 6]
            if parts:
                out.append((f"{f.relative_to(src.parent)}:{node.lineno}", max(parts, key=len)))
    return out


def test_raised_messages_finds_fixed_pieces(tmp_path: Path) -> None:
    mod = tmp_path / "pkg" / "m.py"
    mod.parent.mkdir()
    mod.write_text(
        "def f(p, k):\n"
        "    raise DataError(f'{p}: file not found anywhere')\n"
        "    raise ConfigError('unknown key ' + f'{k!r}; valid keys: a, b')\n"
        "    raise ValueError('not ours')\n"
    )
    assert raised_messages(tmp_path / "pkg") == [
        ("pkg/m.py:2", "file not found anywhere"),
        ("pkg/m.py:3", "valid keys: a, b"),
    ]


def test_troubleshooting_lists_every_clear_error() -> None:
    """Each DataError/ConfigError message of src/medlearn has its fixed text on docs/troubleshooting.md."""
    page = (DOCS / "troubleshooting.md").read_text()
    found = raised_messages(DOCS.parent / "src" / "medlearn")
    assert len(found) > 200
    missing = [f"{where}: {piece!r}" for where, piece in found if piece not in page]
    assert not missing, "add these error messages to docs/troubleshooting.md:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    "page", ["getting_started.md", "python_api.md", "pretrained_weights.md", "troubleshooting.md"]
)
def test_relative_links_resolve(page: str) -> None:
    text = (DOCS / page).read_text()
    anchors_here = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)
    }
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        target, _, anchor = link.partition("#")
        if target.startswith("http"):
            continue
        if target:
            assert (DOCS / target).is_file(), f"{page}: broken link {link}"
        else:
            assert anchor in anchors_here, f"{page}: no heading for #{anchor}"
