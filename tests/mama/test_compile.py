"""``engine.compile=true`` with peft: one compiled MaMA step (the real hooks) equals the eager step."""

from __future__ import annotations

import torch

from medlearn.engine.loop import prepare_run
from medlearn.mama.train import MamaHooks

try:
    from tests.mama.pt_fakes import deterministic_datasets, tiny_config, write_prepared
except ImportError:  # tests/mama collected as a plain folder
    from pt_fakes import deterministic_datasets, tiny_config, write_prepared


def _one_step(cfg, data):
    run = prepare_run(cfg, cfg.train.out, cfg.engine)
    hooks = MamaHooks(cfg, run, data)
    hooks.before_step(0)
    out = hooks.train_step(next(iter(hooks.data.epoch(0, 0))), 0)
    run.close()
    compiled = getattr(hooks.model.image, "_compiled_call_impl", None) is not None
    assert compiled == cfg.engine.compile
    return out, {k: v.detach().clone() for k, v in hooks.model.state_dict().items()}


def test_compiled_step_equals_eager(tmp_path):
    prepared = write_prepared(tmp_path / "data")
    no_dropout = [f"model.text.arch.{k}=0.0" for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")]
    # dropout off: compiled graphs draw their masks from another generator than eager ones
    common = ["loss.late_loss=0", *no_dropout, f"data.prepared_dir={prepared}"]
    eager_cfg = tiny_config(tmp_path / "e", *common)
    data = deterministic_datasets(prepared, eager_cfg.model.image.image_size)
    eager, w_eager = _one_step(eager_cfg, data)
    compiled, w_comp = _one_step(tiny_config(tmp_path / "c", *common, "engine.compile=true"), data)
    assert w_eager.keys() == w_comp.keys()  # in-place compile: checkpoint names unchanged
    for k in ("loss", "clip", "nt_xent", "sla_t2i"):
        torch.testing.assert_close(
            compiled[k], eager[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}"
        )
    # Some biases get no gradient at all: attention key biases (softmax ignores a shift shared by
    # all keys) and biases right before a BatchNorm.  Adam turns their round-off gradients into
    # full-size steps, so eager and compiled may differ there, by at most one step (2 lr).
    lr = eager_cfg.optim.lr
    for k in w_eager:
        if torch.allclose(w_comp[k], w_eager[k], rtol=1e-4, atol=1e-5):
            continue
        assert k.endswith(".bias"), k
        assert (w_comp[k] - w_eager[k]).abs().max() <= 2 * lr * 1.01, k
