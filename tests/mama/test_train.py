"""Tiny pre-training on synthetic EMBED-format data (DICOM -> prepare -> dataset): loss goes down,
local heads stay frozen until ``late_loss``, and checkpoint -> resume continues identically."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from medlearn.config import resolve_preset
from medlearn.engine import read_metrics, seed_everything
from medlearn.mama.modeling.export import load_checkpoint
from medlearn.mama.modeling.losses import mama_loss, shared_sentences
from medlearn.mama.modeling.model import MamaModel
from medlearn.mama.train import build_datasets, train

try:
    from tests.mama.pt_fakes import deterministic_datasets, tiny_config, write_prepared
except ImportError:  # tests/mama collected as a plain folder
    from pt_fakes import deterministic_datasets, tiny_config, write_prepared

STEPS = ("train.max_steps=6", "loss.late_loss=3", "engine.ckpt_every=1", "engine.keep_last=10", "train.val_every=3")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("mama_data"))


@pytest.fixture(scope="module")
def run_a(prepared, tmp_path_factory):
    """Uninterrupted 6-step run; returns (config, datasets, summary)."""
    cfg = tiny_config(tmp_path_factory.mktemp("run_a"), *STEPS, f"data.prepared_dir={prepared}")
    data = deterministic_datasets(prepared, cfg.model.image.image_size)
    return cfg, data, train(cfg, data)


def _batch_loss(model: MamaModel, cfg, ds) -> float:
    from medlearn.mama.data.dataset import collate_mammo

    batch = collate_mammo([ds[i] for i in range(8)])
    enc = model.tokenizer(batch["report"])
    model.eval()
    with torch.no_grad():
        out = model(batch["image"], enc["input_ids"], enc["attention_mask"], batch["extra_image"], late=True)
        return mama_loss(out, cfg.loss, late=True)["loss"].item()


def test_few_steps_lower_the_loss(run_a):
    cfg, (train_ds, _), summary = run_a
    assert summary["step"] == 6 and summary["final"]
    seed_everything(cfg.engine.seed)
    initial = MamaModel(cfg.model, cfg.loss)
    trained, _ = load_checkpoint(summary["final"])
    before, after = _batch_loss(initial, cfg, train_ds), _batch_loss(trained, cfg, train_ds)
    assert after < before - 0.1, (before, after)
    logged = read_metrics(f"{summary['run']}/metrics.jsonl")
    for key in ("clip", "nt_xent", "clip_extra", "sla_t2i", "sla_i2t", "lr", "temperature", "samples_per_s"):
        assert any(key in m for m in logged), key
    assert any("val_i2t_top5" in m for m in logged)


def test_local_heads_frozen_until_late_loss(run_a):
    cfg, _, summary = run_a
    ckpts = [
        load_file(f"{summary['run']}/checkpoints/step_{s:08d}/model_heads.safetensors") for s in (1, 2, 3, 4)
    ]
    seed_everything(cfg.engine.seed)
    init = MamaModel(cfg.model, cfg.loss).heads.state_dict()
    local = [k for k in init if k.startswith(("img_local.", "txt_local.", "local_logit_scale"))]
    assert local
    for k in local:  # steps 1-3 run before late_loss=3 (steps are counted from 0)
        torch.testing.assert_close(ckpts[2][k], init[k], msg=k)
    assert any(not torch.equal(ckpts[3][k], ckpts[2][k]) for k in local if "weight" in k)
    assert not torch.equal(ckpts[0]["img_proj.weight"], ckpts[1]["img_proj.weight"])
    lora = load_file(f"{summary['run']}/checkpoints/final/text_adapter/adapter_model.safetensors")
    assert lora and all("lora_" in k for k in lora)


def test_resume_continues_identically(run_a, tmp_path):
    cfg_a, data, summary_a = run_a
    cfg = tiny_config(tmp_path, *STEPS, f"data.prepared_dir={cfg_a.data.prepared_dir}")
    first = train(cfg, data, stop_at=3)
    assert first["step"] == 3 and first["final"] is None
    second = train(cfg, data)
    assert second["step"] == 6
    for name in ("image", "heads"):
        a = load_file(f"{summary_a['final']}/model_{name}.safetensors")
        b = load_file(f"{second['final']}/model_{name}.safetensors")
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    la = load_file(f"{summary_a['final']}/text_adapter/adapter_model.safetensors")
    lb = load_file(f"{second['final']}/text_adapter/adapter_model.safetensors")
    for k in la:
        torch.testing.assert_close(lb[k], la[k], rtol=0, atol=1e-6, msg=k)
    loss_a = [m["loss"] for m in read_metrics(f"{summary_a['run']}/metrics.jsonl") if "loss" in m][3:]
    loss_b = [m["loss"] for m in read_metrics(f"{second['run']}/metrics.jsonl") if "loss" in m][3:]
    assert loss_b == pytest.approx(loss_a, abs=1e-5)


def test_build_datasets_reads_prepared_folder_and_rejects_missing(prepared, tmp_path):
    cfg = tiny_config(tmp_path, f"data.prepared_dir={prepared}")
    train_ds, val_ds = build_datasets(cfg)
    item = train_ds[0]
    assert item["image"].shape == (3, 32, 32) and item["report"].endswith((".", ";"))
    assert len(val_ds) > 0
    from medlearn.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="prepared_dir"):
        build_datasets(tiny_config(tmp_path))
    with pytest.raises(DataError, match="table.csv"):
        build_datasets(tiny_config(tmp_path, f"data.prepared_dir={tmp_path / 'nothing'}"))


def test_presets_load():
    from medlearn.config import load_config
    from medlearn.mama.config import MamaConfig

    for name in ("paper", "small", "tiny", "demo"):
        cfg = load_config(MamaConfig, resolve_preset("mama", name))
        assert cfg.train.max_steps > 0
    paper = load_config(MamaConfig, resolve_preset("mama", "paper"))
    assert (paper.optim.lr, paper.optim.warmup_steps, paper.train.max_steps, paper.loss.late_loss) == (
        4e-5,
        4000,
        40000,
        8000,
    )
    assert paper.data.batch_size * paper.engine.grad_accum_steps * 4 == 288


def test_training_set_smaller_than_a_batch_is_refused(tmp_path):
    from medlearn.errors import ConfigError

    try:
        from tests.mama.pt_fakes import FakePairs, fake_collate
    except ImportError:
        from pt_fakes import FakePairs, fake_collate
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train(tiny_config(tmp_path), (FakePairs(5), FakePairs(4)), fake_collate)


def _exam_sequence(prepared, tmp_path, monkeypatch, grouping: str) -> list[list[str]]:
    """Exam ids of every training batch of a short real run (``train`` builds the loader itself)."""
    from medlearn.mama import train as train_mod

    seen: list[list[str]] = []
    original = train_mod.TokenizingCollate.__call__

    def recording(self, items):
        seen.append([str(it["exam_id"]) for it in items])
        return original(self, items)

    monkeypatch.setattr(train_mod.TokenizingCollate, "__call__", recording)
    cfg = tiny_config(tmp_path, "train.max_steps=4", "loss.late_loss=2", "engine.ckpt_every=0", "train.val_every=0",
                      "engine.num_workers=0", "data.num_workers=0", f"data.prepared_dir={prepared}",
                      f"data.batch_grouping={grouping}")  # fmt: skip
    train(cfg)
    return seen


def test_batch_grouping_by_exam_keeps_exams_together(prepared, tmp_path, monkeypatch):
    grouped = _exam_sequence(prepared, tmp_path / "exam", monkeypatch, "exam")
    flat = [e for batch in grouped for e in batch]
    runs = sum(1 for k in range(len(flat)) if k == 0 or flat[k] != flat[k - 1])
    assert runs == len(set(flat))  # every exam's images arrive one after the other
    assert any(len(set(batch)) < len(batch) for batch in grouped)  # batches hold several images of an exam
    plain = _exam_sequence(prepared, tmp_path / "none", monkeypatch, "none")
    flat = [e for batch in plain for e in batch]
    assert sum(1 for k in range(len(flat)) if k == 0 or flat[k] != flat[k - 1]) > len(set(flat))


def test_image_lr_scale_gives_the_backbone_its_own_rate(tmp_path):
    """Adam's first step moves every weight with a gradient by its group's learning rate (sign of g
    times lr, weight decay off): the image parameters by lr x image_lr_scale, the others by lr."""
    from medlearn.mama.train import build_optimizer

    cfg = tiny_config(tmp_path, "optim.image_lr_scale=0.1", "optim.weight_decay=0.0", "optim.lr=0.01")
    head, image = torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(4))
    opt = build_optimizer([head, image], cfg, [image])
    (head * torch.arange(1.0, 6.0)).sum().backward()
    (image * -torch.arange(1.0, 5.0)).sum().backward()
    opt.step()
    torch.testing.assert_close(head.detach(), torch.full((5,), -0.01), rtol=1e-5, atol=0)
    torch.testing.assert_close(image.detach(), torch.full((4,), 0.001), rtol=1e-5, atol=0)
    same = build_optimizer([head, image], tiny_config(tmp_path), [image])
    assert len(same.param_groups) == 1  # scale 1: the reference's single group
    with pytest.raises(Exception, match=r"optim\.image_lr_scale must be > 0"):
        tiny_config(tmp_path, "optim.image_lr_scale=0")


def test_training_uses_the_image_lr_scale(prepared, tmp_path):
    cfg = tiny_config(
        tmp_path, "train.max_steps=1", "train.val_every=0", "engine.ckpt_every=1", "optim.image_lr_scale=0.25",
        "optim.schedule=constant", "optim.warmup_steps=0", f"data.prepared_dir={prepared}",
    )  # fmt: skip
    summary = train(cfg, deterministic_datasets(prepared, cfg.model.image.image_size))
    state = torch.load(f"{summary['final']}/state.pt", weights_only=False)
    groups = state["optimizers"]["adamw"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([cfg.optim.lr, 0.25 * cfg.optim.lr])
    seed_everything(cfg.engine.seed)
    model = MamaModel(cfg.model, cfg.loss)
    n_image = sum(1 for p in model.image.parameters() if p.requires_grad)
    assert len(groups[1]["params"]) == n_image


def test_shared_sentence_keys_reach_the_loss(prepared, tmp_path, monkeypatch):
    """``loss.sla_shared_sentences=detach``: every late step hands the loss one key per sentence the
    text tower found, and the templated reports of a batch share sentences."""
    import medlearn.mama.train as mama_train

    seen = []

    def spy(out, cfg, late, info=None, keys=None, sentence_keys=None):
        if late:
            seen.append((out["sentence_mask"].detach().clone(), sentence_keys))
        return mama_loss(out, cfg, late, info, keys, sentence_keys)

    monkeypatch.setattr(mama_train, "mama_loss", spy)
    cfg = tiny_config(
        tmp_path, "train.max_steps=3", "loss.late_loss=1", "train.val_every=0", "engine.ckpt_every=3",
        "loss.sla_shared_sentences=detach", f"data.prepared_dir={prepared}",
    )  # fmt: skip
    summary = train(cfg, deterministic_datasets(prepared, cfg.model.image.image_size))
    assert summary["step"] == 3 and len(seen) == 2
    for mask, keys in seen:
        assert keys is not None and keys.shape[0] == mask.shape[0]
        assert torch.equal((keys != 0).sum(dim=1), mask.sum(dim=1))
        assert shared_sentences(keys, mask.shape[1]).any()
    logged = read_metrics(f"{summary['run']}/metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(m["sla_t2i"])) for m in logged if "sla_t2i" in m)
