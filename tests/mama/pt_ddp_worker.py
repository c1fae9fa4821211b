"""Worker for test_ddp_gather.py, launched by ``torch.distributed.run`` (no tests in this file).

Each rank takes its half of a fixed batch, maps it through a tiny shared network to every feature the
MaMA loss needs, computes the loss with gathering on (``gather=on``) and off (``gather=off``),
back-propagates, averages gradients over ranks as DDP does, and rank 0 saves the results.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
N, P, S, E, IN = 8, 3, 2, 4, 6


class FeatureNet(nn.Module):
    """(n, IN) -> the model outputs of :func:`medlearn.mama.modeling.losses.mama_loss`."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.glob = nn.Parameter(torch.randn(IN, 5 * E, generator=g, dtype=torch.float64))
        self.local = nn.Parameter(torch.randn(IN, (P + S) * E, generator=g, dtype=torch.float64))
        self.logit_scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.local_scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        img, txt, extra, ii1, ii2 = (x @ self.glob).split(E, dim=-1)
        loc = (x @ self.local).reshape(len(x), P + S, E)
        return {
            "img": F.normalize(img, dim=-1), "txt": F.normalize(txt, dim=-1), "img_extra": F.normalize(extra, dim=-1),
            "ii1": ii1, "ii2": ii2, "scale": self.logit_scale.exp(), "local_scale": self.local_scale.exp(),
            "patches": F.normalize(loc[:, :P], dim=-1), "sentences": F.normalize(loc[:, P:], dim=-1),
            "sentence_mask": torch.ones(len(x), S, dtype=torch.bool),
        }  # fmt: skip


def batch() -> torch.Tensor:
    return torch.randn(N, IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def run(mode: str, x: torch.Tensor, info) -> tuple[float, dict[str, torch.Tensor]]:  # noqa: ANN001
    """Loss and parameter gradients of one process's rows."""
    from medlearn.mama.config import LossConfig
    from medlearn.mama.modeling.losses import mama_loss

    net = FeatureNet()
    cfg = LossConfig(gather=mode, sla=mode == "off")
    loss = mama_loss(net(x), cfg, late=True, info=info)["loss"]
    loss.backward()
    return loss.item(), {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in net.named_parameters()
    }


def main(out: Path) -> None:
    import torch.distributed as dist

    from medlearn.mama.modeling.distributed import gather_info

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    half = N // world
    x = batch()[rank * half : (rank + 1) * half]
    result = {"world": world}
    for mode in ("on", "off"):
        info = gather_info(mode)
        loss, grads = run(mode, x, info)
        t = torch.tensor(loss, dtype=torch.float64)
        dist.all_reduce(t)
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        result[mode] = {"loss": t.item() / world, "grads": grads}
    if rank == 0:
        torch.save(result, out / "ddp_gather.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(Path(sys.argv[1]))
