"""``adversarial.route=decoupled`` through the real training step: which loss trains which weights.

The expected gradients are computed here from scratch with ``torch.autograd.grad`` on the same
inputs and the critic the step used: the shared weights get the content loss at lambda = 0 only;
the lambda path (the conditional norms' lambda MLPs) gets content + adversarial at the drawn lambda.
"""

from __future__ import annotations

import torch

import medlearn.mrsi.train as mrsi_train
from medlearn.engine.loop import prepare_run
from medlearn.mrsi.losses import content_loss, critic_input, generator_adv_loss

SMALL = ["data.metabolites=[NAA]", "adversarial.n_critic=1", "model.base_width=2", "model.depth=2",
         "critic.n_blocks=2", "adversarial.zero_fraction=0.0", "model.lambda_offset=true",
         "adversarial.route=decoupled"]  # fmt: skip


def test_decoupled_route_trains_shared_weights_at_lambda_zero_and_the_lambda_path_adversarially(
    tiny_cfg, tmp_path, monkeypatch
):
    cfg = tiny_cfg(*SMALL, f"train.out={tmp_path / 'r'}")
    run = prepare_run(cfg, cfg.train.out, cfg.engine)
    hooks = mrsi_train.MRSIHooks(cfg, run)
    batch = next(iter(hooks.data.epoch(0, 0)))
    gen = hooks.nets.gen
    captured: dict[str, list[torch.Tensor]] = {}
    real_step = mrsi_train.backward_and_step

    def spy(accelerator, loss, optimizer, scheduler=None, params=None, grad_clip=0.0):
        if optimizer is not hooks.nets.opt_g:
            return real_step(accelerator, loss, optimizer, scheduler, params, grad_clip)
        # the expected gradients, from the same draws and the critic as it is now
        b = mrsi_train._to(batch, torch.device("cpu"))
        lr, n, lam = mrsi_train.draw_conditions(cfg, b, mrsi_train.step_generator(cfg.engine.seed, 0))
        assert (lam > 0).all()
        args = (b["t1"], b["flair"], lr, n, b["met"])
        lc = cfg.loss
        closs = lambda y: content_loss(y, b["hr"], lc.l1_weight, lc.ssim_weight, lc.ssim_upsample,  # noqa: E731
                                       lc.ssim_win, lc.ssim_levels, lc.ssim_data_range)["content"]  # fmt: skip
        sr = gen(*args, lam, b["mask"])
        sr0 = gen(*args, torch.zeros_like(lam), b["mask"])
        adv = generator_adv_loss(hooks.nets.critic, critic_input(b["t1"], b["flair"], lr, sr), lam)
        params = list(gen.parameters())
        captured["at_zero"] = list(torch.autograd.grad(closs(sr0), params, allow_unused=True))
        captured["at_lambda"] = list(torch.autograd.grad(closs(sr) + adv, params, allow_unused=True))
        loss.backward()
        captured["step"] = [p.grad.clone() for p in params]
        optimizer.zero_grad()
        return True

    monkeypatch.setattr(mrsi_train, "backward_and_step", spy)
    out = hooks.train_step(batch, 0)
    run.close()
    assert "content0" in out and float(out["adv"]) != 0.0
    on_path = {id(p) for p in gen.lambda_path_parameters()}
    params = list(gen.parameters())
    assert 0 < len(on_path) < len(params)
    n_checked = 0
    for p, g_step, g0, gl in zip(params, captured["step"], captured["at_zero"], captured["at_lambda"]):
        if id(p) in on_path:
            # lambda-anchored norms: the lambda = 0 forward does not reach the lambda MLPs (the
            # S(0) - S(0) of the offset form leaves float round-off only)
            assert g0 is None or float(g0.abs().max()) < 1e-9
            want = gl
        else:
            want = g0 if g0 is not None else torch.zeros_like(p)
        torch.testing.assert_close(g_step, want, rtol=1e-4, atol=1e-7)
        n_checked += int(float(want.abs().max()) > 0)
    assert n_checked > len(on_path)  # both kinds of parameter really received a gradient


def test_forward_lambda_path_only_equals_the_forward_and_reaches_only_the_lambda_mlps():
    from medlearn.mrsi.networks import MCUNet

    torch.manual_seed(0)
    gen = MCUNet(base_width=2, depth=2, latent=4, lambda_offset=True)
    args = (torch.rand(2, 1, 12, 12, 3), torch.rand(2, 1, 12, 12, 3), torch.rand(2, 1, 4, 4),
            torch.tensor([1, 2]), torch.tensor([0, 3]), torch.tensor([0.4, 0.9]))  # fmt: skip
    y = mrsi_train.forward_lambda_path_only(gen, *args)
    torch.testing.assert_close(y, gen(*args), rtol=0, atol=0)
    on_path = {id(p) for p in gen.lambda_path_parameters()}
    params = list(gen.parameters())
    grads = torch.autograd.grad(y.pow(2).sum(), params, allow_unused=True)
    reached = {id(p) for p, g in zip(params, grads) if g is not None}
    assert reached and reached <= on_path
    assert all(p.grad is None for p in params)  # nothing accumulated, and the module's own weights kept
    assert all(isinstance(p, torch.nn.Parameter) for p in gen.parameters())
