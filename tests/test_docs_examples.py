"""Run the documentation's code blocks so that it cannot rot.

- ```python blocks (docs/python_api.md, docs/pretrained_weights.md) are executed in order, in one
  namespace, in an empty folder (as a reader pasting them into a notebook would).
- ```bash blocks of README.md, docs/getting_started.md and the task guides (``SHELL_PAGES``) are
  run command by command, in order, with the installed ``medlearn`` (this environment's ``bin`` on
  ``PATH``), from a temporary folder outside the checkout (one per page), on tiny synthetic data.

Markers for shell blocks (every fenced block of those pages that holds a command must be a
```bash block with one of them on the line above; the test fails on an unmarked one):

    <!-- docs-test: run -->               run every command of the next ```bash block, in order
    <!-- docs-test: skip REASON -->       do not run the block; REASON says why (required; a
                                          synopsis or diagram may stay a plain ``` block)

Inside a ``run`` block, a comment line directly under a command changes what the test does with it:

    # tiny: COMMAND                       run COMMAND instead (the documented tiny-size variant of a
                                          long run; readers see it too)
    # docs-test: skip REASON              do not run the command above (REASON required)

A command is one line (a trailing ``\\`` continues it); other comment lines are ignored.  Each
command runs through ``bash -o pipefail -c`` and must exit 0; the first failure stops its page.
The pages run two at a time (the machine's 2 cores), each page's commands one after another.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
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


# ------------------------------------------------------------------------------- shell commands
SHELL_PAGES = ("README.md", "docs/getting_started.md", "docs/mrsi.md", "docs/mrsi_data.md", "docs/itl.md",
               "docs/mama_data.md", "docs/mama.md", "docs/mama_eval.md")  # fmt: skip
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*docs-test:\s*(\w+)\s*(.*?)\s*-->")
# a line that starts like a command (not a diagram line with box-drawing characters)
LOOKS_LIKE_A_COMMAND = re.compile(
    r"^\s*(medlearn|python|make|pip|torchrun|accelerate|sbatch|srun)\b[^\n\u2500-\u257f]*$", re.M
)


@dataclass
class Command:
    """One documented command: where it is, as written, and what the test runs (None: skipped)."""

    line: int
    written: str
    run: str | None
    reason: str = ""


@dataclass
class ShellBlock:
    line: int  # of the opening fence
    lang: str
    code: str
    marker: tuple[str, str] | None  # (run|skip, reason)

    def commands(self) -> list[Command]:
        """The block's commands in order, continuations joined, ``# tiny:`` / ``# docs-test: skip`` applied."""
        out: list[Command] = []
        lines = self.code.split("\n")
        i = 0
        while i < len(lines):
            raw = lines[i].strip()
            where = self.line + 1 + i
            i += 1
            if not raw:
                continue
            if raw.startswith("#"):
                note = raw.lstrip("#").strip()
                if note.startswith("tiny:"):
                    assert out, f"line {where}: '# tiny:' must follow the command it replaces"
                    out[-1].run = note[len("tiny:") :].strip()
                elif note.startswith("docs-test:"):
                    kind, reason = note[len("docs-test:") :].strip().partition(" ")[::2]
                    assert kind == "skip" and reason.strip(), (
                        f"line {where}: '# docs-test: skip REASON' expected"
                    )
                    assert out, f"line {where}: '# docs-test: skip' must follow the command it skips"
                    out[-1].run, out[-1].reason = None, reason.strip()
                continue
            cmd = raw
            while cmd.endswith("\\") and i < len(lines):
                cmd = cmd[:-1].rstrip() + " " + lines[i].strip()
                i += 1
            out.append(Command(where, cmd, cmd))
        return out


def shell_blocks(text: str) -> list[ShellBlock]:
    """Every fenced block of a page that holds a command (or is marked ``bash``), with its marker."""
    blocks = []
    for m in FENCE.finditer(text):
        lang, code = m.group(1), m.group(2)
        if lang != "bash" and not (
            lang in ("", "sh", "shell", "console") and LOOKS_LIKE_A_COMMAND.search(code)
        ):
            continue
        before = text[: m.start()].rstrip().rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        blocks.append(
            ShellBlock(text.count("\n", 0, m.start()) + 1, lang, code, marker.groups() if marker else None)
        )
    return blocks


def test_shell_block_parsing() -> None:
    page = (
        "intro\n<!-- docs-test: run -->\n```bash\nmedlearn a --x 1 \\\n    --y 2   # long\n"
        "# tiny: medlearn a --x 0\n# plain comment\nsource env/bin/activate\n"
        "# docs-test: skip the test sets PATH itself\nmedlearn b\n```\n\n"
        "<!-- docs-test: skip needs EMBED -->\n\n```bash\nmedlearn c\n```\n"
        "```\nmedlearn d --help\n```\n```\nnot a command\n```\n```python\nx = 1\n```\n"
    )
    blocks = shell_blocks(page)
    assert [(b.line, b.lang, b.marker) for b in blocks] == [
        (3, "bash", ("run", "")), (15, "bash", ("skip", "needs EMBED")), (18, "", None),
    ]  # fmt: skip
    cmds = blocks[0].commands()
    assert [(c.line, c.run, c.reason) for c in cmds] == [
        (4, "medlearn a --x 0", ""), (8, None, "the test sets PATH itself"), (10, "medlearn b", ""),
    ]  # fmt: skip
    assert cmds[0].written == "medlearn a --x 1 --y 2   # long"


@pytest.mark.parametrize("page", SHELL_PAGES)
def test_shell_blocks_are_marked(page: str) -> None:
    """Every command block says whether the docs test runs it, and why not when it does not."""
    bad = []
    for b in shell_blocks((ROOT / page).read_text()):
        if b.marker is None:
            bad.append(f"{page}:{b.line}: a command block needs a docs-test marker on the line above it")
        elif b.marker[0] == "run" and b.lang != "bash":
            bad.append(f"{page}:{b.line}: a block the docs test runs must be a ```bash block")
        elif b.marker[0] not in ("run", "skip") or (b.marker[0] == "skip" and not b.marker[1]):
            bad.append(f"{page}:{b.line}: marker must be 'docs-test: run' or 'docs-test: skip REASON'")
        else:
            for c in b.commands() if b.marker[0] == "run" else []:
                if c.run and re.search(r"(^|\s)/(?!dev/null)|\.\./|<[a-z_ -]+>|\bDIR\b", c.run):
                    bad.append(f"{page}:{c.line}: absolute path or placeholder in a run command: {c.run}")
    assert not bad, "\n".join(bad)


def _shell_env() -> dict[str, str]:
    """The installed CLI first on PATH, one thread, no checkout on PYTHONPATH, headless plots, offline hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDLEARN_CONFIGS", "VIRTUAL_ENV")}
    bin_dir = Path(sys.executable).parent
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    return env


def _run_shell(command: str, cwd: Path, timeout: float = 600) -> tuple[int, str, float, float]:
    """(exit status, stdout+stderr, wall s, CPU s of the command and everything it waited for)."""
    t0 = time.time()
    proc = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=_shell_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of bash + the processes it waited for
    finally:
        timer.cancel()
        proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, output, time.time() - t0, usage.ru_utime + usage.ru_stime


def run_page_commands(page: str, folder: Path) -> list[dict]:
    """Run the page's ``run`` blocks in ``folder``; one record per command, stopping at the first failure."""
    folder.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for block in shell_blocks((ROOT / page).read_text()):
        if block.marker is None or block.marker[0] != "run":
            continue
        for c in block.commands():
            if c.run is None:
                continue
            rc, output, seconds, cpu = _run_shell(c.run, folder)
            records.append({"where": f"{page}:{c.line}", "written": c.written, "run": c.run, "rc": rc,
                            "seconds": seconds, "cpu_s": cpu, "output": output[-3000:]})  # fmt: skip
            if rc != 0:
                return records
    return records


def runnable(page: str) -> list[Command]:
    """The commands of the page's ``run`` blocks that the test runs."""
    blocks = [b for b in shell_blocks((ROOT / page).read_text()) if b.marker and b.marker[0] == "run"]
    return [c for b in blocks for c in b.commands() if c.run is not None]


@pytest.fixture(scope="module")
def page_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The selected pages' commands, run two pages at a time (most commands first), each page in its
    own folder outside the checkout; ``{page: records, "_wall_s": ..., "_cpu_s": ...}``."""
    selected = {getattr(item, "originalname", "") for item in request.session.items}
    pages = list(SHELL_PAGES) if "test_docs_commands_fit_the_budget" in selected else [
        item.callspec.params["page"] for item in request.session.items
        if getattr(item, "originalname", "") == "test_page_commands_run"
    ]  # fmt: skip
    base = tmp_path_factory.mktemp("docs_commands")
    assert ROOT not in base.parents
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=2) as pool:
        order = sorted(pages, key=lambda p: -len(runnable(p)))
        futures = {p: pool.submit(run_page_commands, p, base / Path(p).stem) for p in order}
        results: dict = {p: f.result() for p, f in futures.items()}
    results["_wall_s"] = time.time() - t0
    results["_cpu_s"] = sum(r["cpu_s"] for p in pages for r in results[p])
    return results


@pytest.mark.slow
@pytest.mark.timeout(1800)  # all pages run in the first test's set-up: minutes on a busy machine
@pytest.mark.parametrize("page", SHELL_PAGES)
def test_page_commands_run(page: str, page_runs: dict) -> None:
    """Every runnable command of the page exits 0 from an empty folder (its tiny variant where given)."""
    records = page_runs[page]
    failed = [r for r in records if r["rc"] != 0]
    assert not failed, (
        f"{failed[0]['where']}: exit {failed[0]['rc']}\n  as written: {failed[0]['written']}\n"
        f"  ran: {failed[0]['run']}\n{failed[0]['output']}"
    )
    assert len(records) == len(runnable(page))
    timing = ", ".join(f"{r['where'].split(':')[1]}: {r['seconds']:.0f}s/{r['cpu_s']:.0f}s" for r in records)
    print(
        f"\n{page}: {len(records)} commands, wall/CPU per line {timing}; all pages: "
        f"{page_runs['_wall_s']:.0f} s wall, {page_runs['_cpu_s']:.0f} CPU s"
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_docs_commands_fit_the_budget(page_runs: dict) -> None:
    """All pages' commands together need at most 3 minutes of 2 cores: 360 CPU seconds (CPU time,
    not wall time, so that other jobs on the machine do not decide the outcome)."""
    assert all(p in page_runs for p in SHELL_PAGES)
    assert page_runs["_cpu_s"] <= 360, f"{page_runs['_cpu_s']:.0f} CPU s for the docs' commands (budget 360)"


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
