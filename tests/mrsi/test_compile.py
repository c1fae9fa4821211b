"""``engine.compile=true``: one compiled MRSI training step (the real hooks) equals the eager step."""

from __future__ import annotations

import torch

from medlearn.engine.loop import prepare_run
from medlearn.mrsi.train import MRSIHooks

SMALL = ["data.metabolites=[NAA]", "adversarial.n_critic=1", "model.base_width=2", "model.depth=2",
         "critic.n_blocks=2", "adversarial.zero_fraction=0.0"]  # fmt: skip


def _one_step(cfg):
    run = prepare_run(cfg, cfg.train.out, cfg.engine)
    hooks = MRSIHooks(cfg, run)
    batch = next(iter(hooks.data.epoch(0, 0)))
    out = hooks.train_step(batch, 0)
    run.close()
    assert (getattr(hooks.nets.gen, "_compiled_call_impl", None) is not None) == cfg.engine.compile
    return out, {k: v.detach().clone() for k, v in hooks.nets.gen.state_dict().items()}


def test_compiled_step_equals_eager(tiny_cfg, tmp_path):
    eager, w_eager = _one_step(tiny_cfg(*SMALL, f"train.out={tmp_path / 'e'}"))
    compiled, w_comp = _one_step(tiny_cfg(*SMALL, "engine.compile=true", f"train.out={tmp_path / 'c'}"))
    assert w_eager.keys() == w_comp.keys()  # in-place compile: checkpoints keep their names
    for k in ("loss", "l1", "ssim", "adv", "loss_d"):
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-5, msg=k)
    for k in w_eager:
        torch.testing.assert_close(w_comp[k], w_eager[k], rtol=1e-4, atol=1e-5, msg=k)
    assert eager["adv"] != 0  # the adversarial path really ran
