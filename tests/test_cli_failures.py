"""The newcomer's failure cases at the command line (issue 17, items 2 and 6).

- YAML 1.1 words (off/on/no/yes) typed at the command line reach the config as typed, through
  the real parser and config loading of ``medlearn <task> train``.
- A failed ``train`` leaves no run folder behind.
- A run stopped by SIGTERM / SIGINT writes its checkpoint and exits 143 / 130 (128 + signal), a
  real ``medlearn`` subprocess each time.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from medlearn.cli import build_parser, main
from medlearn.cli_common import load_task_config
from tests.harness import cli_command, cli_env
from tests.mrsi.conftest import write_npy_patients

MRSI_SMALL = ["data.metabolites=[NAA]", "adversarial.n_critic=1", "model.base_width=2", "model.depth=2",
              "critic.n_blocks=2", "train.batch_size=2", "engine.ckpt_every=1"]  # fmt: skip


# ------------------------------------------------------------------------ item 2: YAML words
def _train_config(argv: list[str]):
    args = build_parser().parse_args(argv)
    return load_task_config(args.command, args)


def test_off_and_no_reach_the_config_as_typed() -> None:
    cfg = _train_config(["mama", "train", "--config", "tiny", "loss.gather=off", "engine.precision=no"])
    assert cfg.loss.gather == "off"  # not the boolean False, not the string 'False'
    assert cfg.engine.precision == "fp32"  # 'no' is the documented spelling of full precision
    assert _train_config(["mama", "train", "--config", "tiny", "loss.gather=on"]).loss.gather == "on"
    for task in ("mrsi", "itl"):
        assert (
            _train_config([task, "train", "--config", "tiny", "engine.precision=no"]).engine.precision
            == "fp32"
        )


def test_show_config_output_round_trips_off(tmp_path: Path, capsys) -> None:
    """show-config writes YAML that reads back to the same choice (the 'copy, edit, run' path)."""
    assert main(["mama", "show-config", "tiny", "loss.gather=off"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text)["loss"]["gather"] == "off"  # quoted in the YAML, a string once read
    (tmp_path / "mine.yaml").write_text(text)
    assert _train_config(["mama", "train", "--config", str(tmp_path / "mine.yaml")]).loss.gather == "off"


def test_a_choice_that_is_not_offered_names_the_key(capsys) -> None:
    assert main(["mama", "train", "--config", "tiny", "loss.gather=maybe", "train.out=never"]) == 2
    err = capsys.readouterr().err
    assert "loss.gather" in err and "'maybe'" in err and "'auto', 'on', 'off'" in err
    assert not Path("never").exists()


# --------------------------------------------------------------- item 6: no half-written runs
def _fails_and_leaves_nothing(argv: list[str], out: Path, capsys) -> None:
    code = main([*argv, f"train.out={out}"])
    assert code == 2 and "error:" in capsys.readouterr().err
    assert not out.exists(), f"the failed command left {sorted(p.name for p in out.iterdir())}"


def test_failed_train_leaves_no_run_folder(tmp_path: Path, capsys) -> None:
    root = write_npy_patients(tmp_path / "data", n_patients=4, grid=16, slices=1)
    mrsi = ["mrsi", "train", "--config", "tiny", *MRSI_SMALL]
    _fails_and_leaves_nothing([*mrsi, f"data.root={tmp_path / 'nowhere'}"], tmp_path / "r1", capsys)
    _fails_and_leaves_nothing([*mrsi, f"data.root={root}", "train.no_such_key=1"], tmp_path / "r2", capsys)
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "table.csv").write_text("a,b\n1,2\n")
    mama = ["mama", "train", "--config", "tiny"]
    _fails_and_leaves_nothing([*mama, f"data.prepared_dir={tmp_path / 'nowhere'}"], tmp_path / "r3", capsys)
    _fails_and_leaves_nothing([*mama, f"data.prepared_dir={tmp_path / 'prep'}"], tmp_path / "r4", capsys)
    itl = ["itl", "train", "--config", "tiny", f"data.cache_dir={tmp_path / 'cache'}"]
    _fails_and_leaves_nothing([*itl, f"data.root={tmp_path / 'nowhere'}"], tmp_path / "r6", capsys)
    # a folder that existed before a failed command is left exactly as it was
    (tmp_path / "r5").mkdir()
    (tmp_path / "r5" / "notes.txt").write_text("mine")
    assert main([*mama, f"data.prepared_dir={tmp_path / 'prep'}", f"train.out={tmp_path / 'r5'}"]) == 2
    assert [p.name for p in (tmp_path / "r5").iterdir()] == ["notes.txt"]


def test_mrsi_train_failing_on_a_corrupt_file_leaves_no_run_folder(tmp_path: Path, capsys) -> None:
    root = write_npy_patients(tmp_path / "data", n_patients=4, grid=16, slices=1)
    (root / "Patient2" / "Met_filtered" / "NAA.npy").write_bytes(b"not an npy file" * 4)
    _fails_and_leaves_nothing(["mrsi", "train", "--config", "tiny", *MRSI_SMALL, f"data.root={root}"],
                              tmp_path / "run", capsys)  # fmt: skip


# ------------------------------------------------------------------ item 6: exit status 130/143
def _latest_step(checkpoints: Path) -> int:
    """The step named by ``checkpoints/LATEST`` (-1 while there is none)."""
    try:
        name = (checkpoints / "LATEST").read_text().strip()
    except OSError:
        return -1
    return int(name.removeprefix("step_")) if name.removeprefix("step_").isdigit() else -1


def _stop_with(signum: int, args: list[str], checkpoints: Path, cwd: Path, timeout: float = 240) -> int:
    """Start the CLI, send ``signum`` to it once ``checkpoints`` holds step 2 or later, return its exit status.

    Polls ``LATEST``, not the ``step_00000002`` folder: with ``engine.keep_last=2`` a fast run deletes
    that folder a few milliseconds after writing it, so a poll could miss it and wait forever."""
    proc = subprocess.Popen(
        cli_command(args),
        env=cli_env(),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start = time.time()
        while _latest_step(checkpoints) < 2:
            assert proc.poll() is None, f"finished before the signal:\n{proc.stderr.read()[-3000:]}"
            assert time.time() - start < timeout, "checkpoint not reached in time"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)  # reads stderr while waiting: a full pipe cannot block it
        code = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "rerun the same command to resume" in err, err[-3000:]
    return code


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_mrsi_train_stopped_by_signal_exits_128_plus_signal(tmp_path: Path, signum: int) -> None:
    root = write_npy_patients(tmp_path / "data", n_patients=4, grid=16, slices=1)
    out = tmp_path / "run"
    args = ["mrsi", "train", "--config", "tiny", f"data.root={root}", f"train.out={out}", *MRSI_SMALL,
            "train.epochs=100000"]  # fmt: skip
    code = _stop_with(signum, args, out / "checkpoints", tmp_path)
    assert code == 128 + int(signum)  # 143 for SIGTERM, 130 for SIGINT
    ckpts = out / "checkpoints"
    assert (ckpts / "LATEST").is_file() and not (ckpts / "final").exists()


def test_itl_train_stopped_by_sigterm_exits_143(tmp_path: Path) -> None:
    from medlearn.itl.synth import make_benchmark

    root = make_benchmark(tmp_path / "sites", seed=0, scale="tiny", sites=["RUNMC", "BMC", "HK"])
    out = tmp_path / "run"
    args = ["itl", "train", "--config", "tiny", f"data.root={root}", "data.sites=[RUNMC,BMC]",
            f"train.out={out}", "train.steps_per_phase=100000", "engine.ckpt_every=1"]  # fmt: skip
    phase = out / "phases" / "phase_00"
    code = _stop_with(signal.SIGTERM, args, phase, tmp_path)
    assert code == 143
    assert (phase / "LATEST").is_file() and not (out / "phases" / "phase_01").exists()
