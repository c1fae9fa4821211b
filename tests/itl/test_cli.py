from medlearn.cli import main

from .conftest import TINY


def test_cli_synth_prepare_and_bad_config(tmp_path, capsys):
    data = tmp_path / "data"
    assert (
        main(["itl", "synth", "--out", str(data), "--scale", "tiny", "--sites", "HK,UCL", "--cases", "2"])
        == 0
    )
    assert (data / "UCL" / "Case01_segmentation.nii.gz").is_file()
    cfg = ["--config", str(TINY), f"data.root={data}", "data.sites=[UCL]", "data.heldout=[HK]"]
    assert main(["itl", "prepare", *cfg, "--check-only"]) == 0
    assert "dataset check passed" in capsys.readouterr().out
    assert main(["itl", "prepare", *cfg, f"data.cache_dir={tmp_path / 'c'}"]) == 0
    assert "UCL" in capsys.readouterr().out
    # unknown key and bad value: exit code 2 with a message naming the key
    assert main(["itl", "train", *cfg, "train.strategi=itl"]) == 2
    assert "train.strategi" in capsys.readouterr().err
    assert main(["itl", "train", *cfg, "train.strategy=foo"]) == 2
    assert "train.strategy" in capsys.readouterr().err
    assert main(["itl", "prepare", *cfg[:2], f"data.root={tmp_path / 'none'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_predict_and_evaluate(finished_run, site_root, tmp_path, capsys):
    run, _ = finished_run
    out = tmp_path / "m.nii.gz"
    assert (
        main(
            [
                "itl",
                "predict",
                "--checkpoint",
                str(run),
                str(site_root / "HK" / "Case02.nii.gz"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.is_file()
    assert main(["itl", "evaluate", "--run", str(run)]) == 0
    text = capsys.readouterr().out
    assert "HD95" in text and (run / "evaluation" / "summary.json").is_file()
    for fig in ("R.png", "site_dice.png", "overlays.png"):
        assert (run / "figures" / fig).is_file()


def test_presets_load():
    from medlearn.config import load_config
    from medlearn.itl.config import ITLConfig

    for name in ("paper", "small", "tiny", "demo"):
        cfg = load_config(ITLConfig, TINY.parent / f"{name}.yaml")
        assert cfg.data.heldout and cfg.data.sites
    paper = load_config(ITLConfig, TINY.parent / "paper.yaml")
    assert (paper.data.size, paper.data.spacing_mm, paper.model.arch) == (384, 0.5, "resnet18")
