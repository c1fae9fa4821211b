"""Dropout with cheaper masks on CPU (``model.text.fast_dropout``).

torch's CPU dropout draws one ``bernoulli_`` sample per element, one call of the Mersenne-Twister
generator each; in the MiniLM text tower those draws were about a fifth of a training step. Here
every 64-bit draw of the same (seeded, checkpointed) default generator gives four 16-bit uniform
integers u in [-32768, 32767], and an element is dropped when ``u + 32768 < round(p * 65536)``.
So the drop probability is ``p`` rounded to a multiple of 2^-16 (MiniLM's 0.1 becomes 0.1000061)
and the kept elements are scaled by 1 / (1 - that probability): the expectation is unchanged and
the masks are independent Bernoulli draws, as torch's, from a different stream of random numbers.
On every other device :class:`FastDropout` is ``torch.nn.functional.dropout``.

The attention-probability dropout is drawn inside SDPA, which on CPU also leaves its fused kernel
for a slower generic path whenever dropout is on. :func:`use_fast_attention_dropout` switches a
Hugging Face model from ``sdpa`` to :data:`FAST_SDPA`: :func:`fast_dropout_attention`, which in
CPU training computes softmax(q k^T * scale + mask) with the same masks, then :func:`keep_mask`,
then the product with v, and otherwise hands the call to transformers' own SDPA attention.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LEVELS = 65536
"""16-bit integers per draw: the drop probability is a multiple of 1 / LEVELS."""
FAST_SDPA = "medlearn_sdpa"
"""``attn_implementation`` name of :func:`fast_dropout_attention` in transformers' registries."""


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> tuple[Tensor, float]:
    """A dropout keep-mask and its scale.

    Args:
        shape: the mask's shape.
        p: drop probability in [0, 1).
        device: where to draw (meant for CPU).
    Returns:
        ``keep`` (bool, ``shape``): True for kept elements, each False with probability
        ``round(p * 65536) / 65536``; ``scale`` = 1 / (1 - that probability).
    """
    n = math.prod(shape)
    cut = round(p * LEVELS)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    u = words.view(torch.int16)[:n].view(tuple(shape))
    return u >= cut - LEVELS // 2, LEVELS / (LEVELS - cut)


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` whose CPU masks come from :func:`keep_mask` (same ``p``, same role)."""

    def forward(self, x: Tensor) -> Tensor:
        """(...) -> (...): ``x`` times the scaled keep-mask in training, ``x`` itself in evaluation."""
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or round(self.p * LEVELS) >= LEVELS:
            return nn.functional.dropout(x, self.p, True, self.inplace)
        keep, scale = keep_mask(x.shape, self.p, x.device)
        return x * keep.to(x.dtype).mul_(scale)


def use_fast_dropout(module: nn.Module) -> int:
    """Replace every plain :class:`torch.nn.Dropout` inside ``module`` by a :class:`FastDropout` of the same ``p``.

    Returns:
        How many were replaced (modules that only carry a probability, such as BERT's
        attention-probability dropout whose ``p`` is handed to SDPA, are replaced too and keep
        working: SDPA still draws those masks).
    """
    swaps = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Dropout
    ]
    for parent, name, child in swaps:
        setattr(parent, name, FastDropout(child.p, child.inplace))
    return len(swaps)


def _attention_probs_dropout(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scaling: float, p: float
) -> Tensor:
    """(B, H, Q, d), (B, H, K, d) x2, (B|1, 1|H, Q, K) bool (True = attend) or additive mask -> (B, H, Q, d).

    ``softmax(q k^T * scaling + mask) * keep / (1 - p)`` times v, arranged so that the (Q, K)
    blocks are touched as few times as possible: the scaling multiplies q (Q x d) and the dropout
    scale the output (Q x d), the mask is added in place (its gradient is free, unlike
    ``masked_fill``'s), and a bool mask becomes an additive one of (B, 1, Q, K) first.
    """
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    if mask is not None:
        if mask.dtype == torch.bool:
            low = torch.finfo(scores.dtype).min
            mask = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~mask, low)
        scores = scores.add_(mask)  # the product's output is not saved for its backward
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    keep, scale = keep_mask(probs.shape, p, probs.device)
    return torch.matmul(probs * keep.to(probs.dtype), value).mul_(scale)


def fast_dropout_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """transformers attention function (the ``sdpa`` signature): (B, H, Q, d) -> (B, Q, H, d), None.

    CPU training with ``dropout > 0`` and no extras: softmax attention whose probability dropout
    masks come from :func:`keep_mask`. Everything else: transformers' ``sdpa_attention_forward``.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    extras = any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "sliding_window", "s_aux"))
    q_len, k_len = query.shape[2], key.shape[2]
    plain = dropout == 0.0 or round(dropout * LEVELS) >= LEVELS or not module.training
    if plain or query.device.type != "cpu" or extras or q_len != k_len:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    mask = attention_mask
    if mask is None and causal and q_len > 1:  # as SDPA's is_causal: key j visible to query i when j <= i
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()[None, None]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = _attention_probs_dropout(query, key, value, mask, scale, dropout)
    return out.transpose(1, 2).contiguous(), None


def register_fast_attention() -> None:
    """Register :func:`fast_dropout_attention` (and SDPA's mask builder) as :data:`FAST_SDPA` in transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FAST_SDPA, fast_dropout_attention)
    AttentionMaskInterface.register(FAST_SDPA, sdpa_mask)


def use_fast_attention_dropout(model: nn.Module) -> bool:
    """Switch a transformers model that runs ``sdpa`` attention to :data:`FAST_SDPA`; False if it runs another kind."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    register_fast_attention()
    model.set_attn_implementation(FAST_SDPA)
    return True
