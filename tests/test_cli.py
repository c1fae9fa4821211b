"""The command tree: tasks from the registry, generic verbs, presets, version, logging, clear errors."""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import medlearn
from medlearn.cli import build_parser, main
from medlearn.cli_common import THIRD_PARTY_LOGGERS, setup_logging
from medlearn.config import load_config
from medlearn.errors import ConfigError
from medlearn.tasks import BUILTIN_TASKS, Task, get_task, register_task, registered_tasks, unregister_task

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "medlearn"
PACKAGED = SRC / "configs"


def _verbs(parser, task: str) -> set[str]:
    p_task = parser._subparsers._group_actions[0].choices[task]
    return set(p_task._subparsers._group_actions[0].choices)


def test_help_lists_commands_and_every_task_has_the_generic_verbs():
    parser = build_parser()
    text = parser.format_help()
    assert "env" in text and "demo" in text
    for name in BUILTIN_TASKS:
        assert name in text
        assert {"train", "presets", "show-config", "demo", "synth", "prepare"} <= _verbs(parser, name)


def test_env_json(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["libraries"]["torch"] and isinstance(info["gpus"], list)
    assert info["medlearn"] == medlearn.__version__


@pytest.mark.parametrize("module", ["medlearn", "medlearn.cli"])
def test_python_m_runs_the_command(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "itl", "presets"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == sorted(p.stem for p in (PACKAGED / "itl").glob("*.yaml"))


def test_version_names_the_package_version_and_a_real_commit(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith(f"medlearn {medlearn.__version__} (git ")  # a checkout: the revision is there
    rev = text.split("(git ")[1].rstrip(")").removesuffix("-dirty")
    check = subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True)
    assert check.returncode == 0, f"{rev} is not a commit of this checkout"


def test_presets_verb_lists_the_packaged_files(capsys):
    for task in BUILTIN_TASKS:
        assert main([task, "presets"]) == 0
        names = capsys.readouterr().out.split()
        assert names == sorted(p.stem for p in (PACKAGED / task).glob("*.yaml"))
        assert {"demo", "paper", "small", "tiny"} <= set(names)
    assert main(["itl", "presets", "--paths"]) == 0
    rows = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert Path(rows["tiny"]).resolve() == (PACKAGED / "itl" / "tiny.yaml").resolve()


def test_configs_folder_of_the_checkout_is_the_packaged_one():
    """One source of truth: configs/ at the top of the checkout is a link to the package's presets."""
    assert (ROOT / "configs").resolve() == PACKAGED.resolve()


def test_show_config_prints_yaml_that_loads_back_to_the_same_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a documented path still resolves from another folder
    assert main(["mrsi", "show-config", "configs/mrsi/tiny.yaml", "train.epochs=3", "model.depth=2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# medlearn mrsi: preset 'configs/mrsi/tiny.yaml'")
    (tmp_path / "mine.yaml").write_text(text)
    schema = get_task("mrsi").schema
    ref = load_config(schema, PACKAGED / "mrsi" / "tiny.yaml", ["train.epochs=3", "model.depth=2"])
    assert load_config(schema, tmp_path / "mine.yaml") == ref
    assert yaml.safe_load(text)["train"]["epochs"] == 3
    assert main(["mrsi", "show-config", "tinyy"]) == 2
    assert "unknown mrsi preset 'tinyy'" in capsys.readouterr().err


def test_config_flag_takes_a_name_a_path_or_a_medlearn_configs_preset(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "cfgs" / "itl"
    mine.mkdir(parents=True)
    (mine / "narrow.yaml").write_text("model: {width: 3}\n")
    monkeypatch.setenv("MEDLEARN_CONFIGS", str(tmp_path / "cfgs"))
    assert main(["itl", "show-config", "narrow"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["width"] == 3
    assert main(["itl", "presets"]) == 0
    assert "narrow" in capsys.readouterr().out.split()
    assert main(["itl", "show-config", str(mine / "narrow.yaml")]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["width"] == 3
    # a task verb with --config NAME goes through the same lookup (data.root is checked after it)
    rc = main(["itl", "prepare", "--config", "narrow", f"data.root={tmp_path / 'none'}", "--check-only"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert main(["itl", "prepare", "--config", "narow", "--check-only"]) == 2
    assert "valid presets: demo, narrow, paper, small, tiny" in capsys.readouterr().err


# --------------------------------------------------------------------------------- plug-in tasks
@dataclass
class _ToyOptim:
    lr: float = 0.1


@dataclass
class _ToyConfig:
    name: str = "toy"
    optim: _ToyOptim = field(default_factory=_ToyOptim)


def test_a_fourth_task_is_one_registration(capsys):
    seen = []

    def train(cfg):
        seen.append(cfg)
        return {"lr_used": cfg.optim.lr}

    register_task(Task(name="toy", help="a toy task", schema=_ToyConfig, train=train))
    try:
        parser = build_parser()
        assert _verbs(parser, "toy") == {"train", "presets", "show-config"}  # no demo without run_demo
        assert main(["toy", "train", "optim.lr=0.5"]) == 0
        assert seen[-1] == _ToyConfig(optim=_ToyOptim(lr=0.5))
        assert json.loads(capsys.readouterr().out) == {"lr_used": 0.5}
        assert main(["toy", "train", "optim.lrr=0.5"]) == 2
        assert "optim.lrr" in capsys.readouterr().err
        assert main(["toy", "presets"]) == 0 and capsys.readouterr().out == ""
        from medlearn import api

        assert "toy" in api.TASKS
        with pytest.raises(ConfigError, match="task 'toy' does not provide build_model"):
            api.build_model("toy")
        with pytest.raises(ConfigError, match="a task named 'toy' is already registered"):
            register_task(Task(name="toy", help="", schema=_ToyConfig, train=train))
    finally:
        unregister_task("toy")
    assert "toy" not in registered_tasks()


def _branches_on_task_names(path: Path) -> list[str]:
    """``x == "mrsi"``-style comparisons (or ``in`` tests) against a built-in task name in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                for c in consts:
                    if isinstance(c, ast.Constant) and c.value in BUILTIN_TASKS:
                        found.append(f"{path.name}:{node.lineno}")
    return found


def test_api_and_cli_do_not_branch_on_task_names(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(task):\n    if task == 'itl':\n        return 1\n    return 'mama' in (task,)\n")
    assert _branches_on_task_names(bad) == ["bad.py:2", "bad.py:4"]  # the check can fail
    bad.write_text("def f(task):\n    return task in ('mrsi', 'itl')\n")
    assert _branches_on_task_names(bad) == ["bad.py:2", "bad.py:2"]  # one per name
    for name in ("api.py", "cli.py", "cli_common.py", "demo.py"):
        assert _branches_on_task_names(SRC / name) == [], name


def test_cli_common_does_not_import_cli():
    tree = ast.parse((SRC / "cli_common.py").read_text())
    imported = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in (n.names if isinstance(n, ast.Import) else [n])
    }
    assert "medlearn.cli" not in imported and "medlearn.demo" not in imported


def test_demo_unknown_task_is_an_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--tasks", "nosuchtask"]) == 2
    err = capsys.readouterr().err
    assert "nosuchtask" in err and "tasks with a demo: mrsi, mama, itl" in err


# ------------------------------------------------------------------------------------- logging
def test_third_party_chatter_is_hidden_by_default_and_shown_with_verbose(monkeypatch):
    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(key, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup_logging(verbose=False)
        warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("ours", FutureWarning, "y.py", 1, module="medlearn.itl.train")
        assert [str(w.message) for w in caught] == ["ours"]
    assert logging.getLogger("transformers").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("monai").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("medlearn.itl").getEffectiveLevel() == logging.INFO
    assert (
        os.environ["TRANSFORMERS_VERBOSITY"] == "error" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    )
    setup_logging(verbose=True)
    assert all(logging.getLogger(n).getEffectiveLevel() == logging.INFO for n in THIRD_PARTY_LOGGERS)
    assert logging.getLogger("medlearn.itl").getEffectiveLevel() == logging.DEBUG
    setup_logging(verbose=False)
