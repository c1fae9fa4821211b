"""Run by torchrun in test_ddp.py: the toy task through the shared loop on this rank's half of every batch."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.engine.toy_loop import run_toy  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    per_rank_batch = int(sys.argv[2])
    state = run_toy(out, total_steps=5, batch_size=per_rank_batch, shuffle=False)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    torch.save({"state": state, "world": world}, out / f"params_rank{rank}.pt")
