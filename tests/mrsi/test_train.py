"""Training: a few steps lower the loss, a resumed run equals an uninterrupted one, both conditioning modes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from medlearn.engine import build_accelerator
from medlearn.errors import ConfigError
from medlearn.mrsi.train import (
    _make_nets,
    epoch_batches,
    load_patients,
    load_split,
    make_dataset,
    train,
    train_step,
    validate,
)

SMALL = [
    "data.metabolites=[NAA,tCho]",
    "adversarial.n_critic=1",
    "model.base_width=2",
    "model.depth=2",
    "critic.n_blocks=2",
]


def test_a_few_steps_lower_the_loss(tiny_cfg) -> None:
    cfg = tiny_cfg(*SMALL, "adversarial.enabled=false", "optim.lr=3e-3", "data.augment=false")
    split = load_split(cfg)
    ds = make_dataset(cfg, load_patients(cfg, split["train"]), train=True)
    batch = default_collate([ds[i] for i in range(2)])
    torch.manual_seed(0)
    nets = _make_nets(cfg, ds.grid, steps_per_epoch=10)
    acc = build_accelerator(cfg.engine)
    losses = [train_step(cfg, nets, batch, acc, step)["loss"] for step in range(8)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_adversarial_step_updates_both_networks(tiny_cfg) -> None:
    cfg = tiny_cfg(*SMALL, "adversarial.zero_fraction=0.0")
    split = load_split(cfg)
    ds = make_dataset(cfg, load_patients(cfg, split["train"]), train=True)
    batch = default_collate([ds[i] for i in range(3)])
    nets = _make_nets(cfg, ds.grid, steps_per_epoch=10)
    before_d = [p.detach().clone() for p in nets.critic.parameters()]
    before_g = [p.detach().clone() for p in nets.gen.parameters()]
    out = train_step(cfg, nets, batch, build_accelerator(cfg.engine), 0)
    assert out["lam"] > 0 and out["adv"] != 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before_d, nets.critic.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, nets.gen.parameters()))


def test_reference_mode_groups_batches_by_metabolite(tiny_cfg) -> None:
    cfg = tiny_cfg(*SMALL, "model.per_sample=false")
    split = load_split(cfg)
    ds = make_dataset(cfg, load_patients(cfg, split["train"]), train=True)
    batches = epoch_batches(ds, 0, 3, seed=0, group_by_metabolite=True)
    assert sorted(i for b in batches for i in b) == list(range(len(ds)))
    assert all(len({ds.index[i][2] for i in b}) == 1 for b in batches)
    assert batches == epoch_batches(ds, 0, 3, seed=0, group_by_metabolite=True)
    batch = default_collate([ds[i] for i in batches[0]])
    nets = _make_nets(cfg, ds.grid, steps_per_epoch=10)
    out = train_step(cfg, nets, batch, build_accelerator(cfg.engine), 0)
    assert torch.isfinite(out["loss"])
    # validation runs mixed batches through the same weights and leaves the switch as it was
    val = validate(cfg, nets.gen, ds, torch.device("cpu"))
    assert nets.gen.per_sample is False and val["val_content"] > 0


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_cfg, tmp_path) -> None:
    common = [*SMALL, "data.metabolites=[NAA]", "train.epochs=2", "train.batch_size=2"]
    whole = train(tiny_cfg(*common, f"train.out={tmp_path / 'whole'}"))
    part = train(tiny_cfg(*common, "train.max_steps=3", f"train.out={tmp_path / 'part'}"))
    assert part["stopped_early"] and part["steps"] == 3
    rest = train(tiny_cfg(*common, f"train.out={tmp_path / 'part'}"))
    assert rest["steps"] == whole["steps"] == 4
    from safetensors.torch import load_file

    for name in ("generator", "critic"):
        a = load_file(tmp_path / "whole" / "checkpoints" / "final" / f"model_{name}.safetensors")
        b = load_file(tmp_path / "part" / "checkpoints" / "final" / f"model_{name}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "whole" / "best" / "best" / "model_generator.safetensors").is_file()
    assert (tmp_path / "whole" / "splits.json").is_file() and (tmp_path / "whole" / "metrics.jsonl").is_file()


def test_bad_config_values_are_refused(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="model.arch"):
        tiny_cfg("model.arch=unet9")
    with pytest.raises(ConfigError, match="unknown config key 'model.widths'"):
        tiny_cfg("model.widths=3")
    with pytest.raises(ConfigError, match="zero_fraction"):
        tiny_cfg("adversarial.zero_fraction=2")


def test_lambda_scale_default_and_reference_switch(tiny_cfg) -> None:
    from medlearn.mrsi.train import lambda_scale

    assert lambda_scale(tiny_cfg("adversarial.lambda_span=0.1")) == pytest.approx(
        1 / 0.1
    )  # ours: lambda / lambda_max
    assert lambda_scale(tiny_cfg("model.lambda_scale=1.0")) == 1.0  # reference: raw lambda
    assert lambda_scale(tiny_cfg("adversarial.fixed_lambda=0.5")) == pytest.approx(2.0)
    gen_a, _ = build_models_pair(
        tiny_cfg(*SMALL, "model.lambda_scale=10"), tiny_cfg(*SMALL, "model.lambda_scale=1")
    )
    t1, lr = torch.rand(2, 1, 48, 48, 3), torch.rand(2, 1, 16, 16)
    n, met = torch.tensor([3, 4]), torch.tensor([0, 6])
    with torch.no_grad():
        a = gen_a[0](t1, t1, lr, n, met, torch.tensor([0.01, 0.05]))
        b = gen_a[1](t1, t1, lr, n, met, torch.tensor([0.1, 0.5]))
    assert torch.allclose(a, b, atol=1e-6)


def build_models_pair(cfg_a, cfg_b):
    from medlearn.mrsi.train import build_models

    torch.manual_seed(0)
    a, _ = build_models(cfg_a, (16, 16))
    b, _ = build_models(cfg_b, (16, 16))
    b.load_state_dict(a.state_dict())
    return (a, b), None


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


GUARD = [*SMALL, "data.metabolites=[NAA]", "train.batch_size=2", "adversarial.enabled=false"]


def test_training_into_a_run_of_another_model_is_refused_before_anything_is_written(
    tiny_cfg, tmp_path
) -> None:
    """Formerly: config.yaml overwritten, then a raw 'size mismatch' from load_state_dict."""
    out = tmp_path / "run"
    train(tiny_cfg(*GUARD, "train.max_steps=2", f"train.out={out}"))
    before = _files(out)
    with pytest.raises(ConfigError, match=r"model\.base_width \(2 -> 4\)") as err:
        train(tiny_cfg(*GUARD, "train.max_steps=2", "model.base_width=4", f"train.out={out}"))
    assert "train.out" in str(err.value) and "engine.on_existing_run=move_aside" in str(err.value)
    assert _files(out) == before  # config.yaml, splits, metrics and checkpoints untouched


def test_a_safe_change_resumes_the_mrsi_run_and_is_recorded(tiny_cfg, tmp_path) -> None:
    import json

    out = tmp_path / "run"
    first = train(tiny_cfg(*GUARD, "train.max_steps=2", f"train.out={out}"))
    more = train(tiny_cfg(*GUARD, "train.max_steps=3", f"train.out={out}"))
    assert first["steps"] == 2 and more["steps"] == 3 and more["signal"] is None
    (entry,) = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    assert entry["changed"] == {"train.max_steps": [2, 3]}
    assert "max_steps: 2" in (out / entry["previous"]).read_text()
    assert "max_steps: 3" in (out / "config.yaml").read_text()
