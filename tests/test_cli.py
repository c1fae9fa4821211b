"""The command tree: --help, env, demo with whatever tasks are built, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

from medlearn.cli import build_parser, main
from medlearn.tasks import KNOWN_TASKS, registered_tasks


def test_help_lists_commands(capsys):
    parser = build_parser()
    text = parser.format_help()
    assert "env" in text and "demo" in text
    for name in registered_tasks():
        assert name in text


def test_env_json(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["libraries"]["torch"] and isinstance(info["gpus"], list)


def test_console_script_help_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "medlearn.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "medlearn" in proc.stdout


def test_task_protocol_of_registered_tasks():
    for name, mod in registered_tasks().items():
        assert name in KNOWN_TASKS
        assert isinstance(mod.HELP, str) and callable(mod.add_verbs) and callable(mod.run_demo)


def test_demo_unknown_task_is_an_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--tasks", "nosuchtask"]) == 2
    assert "nosuchtask" in capsys.readouterr().err
