"""MaMA losses as pure functions.

Notation: B rows on this process, N = world * B gathered rows; ``rank`` locates this process's rows
inside the gathered ones.  "CE both ways" is CE(S) + CE(S^T) as in the reference (a sum, not a mean).

* :func:`clip_loss`: image rows against all texts plus text rows against all images.
* :func:`nt_xent_loss`: SimCLR's NT-Xent over the 2N views, this process's 2B rows.
* :func:`sla_scores` / :func:`sla_loss`: symmetric local alignment, computed in image chunks so the
  (chunk, N_txt, P, S) similarity tensor bounds the memory; the gradient of a max only keeps its
  indices, so the chunks are freed after the forward.
* :func:`mama_loss`: the weighted sum of the switched-on terms, with ``late_loss`` gating.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from medlearn.mama.config import LossConfig
from medlearn.mama.modeling.distributed import GatherInfo, gather_no_grad, gather_with_grad


def contrastive_targets(n_local: int, rank: int, device: torch.device) -> Tensor:
    """(n_local,) column of each local row's positive among the gathered columns."""
    return rank * n_local + torch.arange(n_local, device=device)


def _stable_key(data: bytes) -> int:
    """A non-negative int64 hash of ``data`` that is the same in every process and run."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def report_keys(reports: Sequence[str]) -> Tensor:
    """(B,) int64 stable hash of each report text (identical text -> identical key)."""
    return torch.tensor([_stable_key(r.encode()) for r in reports], dtype=torch.int64)


def sentence_keys(input_ids: Tensor, attention_mask: Tensor, sep_id: int) -> Tensor:
    """(B, S) int64 key of every sentence slot of tokenised reports (0 = no sentence).

    Slot s holds the tokens after the s-th separator up to and including the (s+1)-th, the same
    slots as :func:`~medlearn.mama.modeling.text_tower.sentence_states`: identical token runs give
    identical keys. S is the most separators of any row (at least 1). Runs on the host, from the
    batch as the loader delivers it (about 1 ms for 36 reports of 144 tokens).
    """
    ids, mask = input_ids.tolist(), attention_mask.bool().tolist()
    rows: list[list[int]] = []
    for row_ids, row_mask in zip(ids, mask):
        keys, run = [], []
        for tok, real in zip(row_ids, row_mask):
            if not real:
                continue
            run.append(tok)
            if tok == sep_id:
                keys.append(_stable_key(repr(run).encode()) or 1)  # 0 marks an empty slot
                run = []
        rows.append(keys)
    width = max([1, *(len(k) for k in rows)])
    return torch.tensor([k + [0] * (width - len(k)) for k in rows], dtype=torch.int64)


def shared_sentences(keys: Tensor, n_slots: int) -> Tensor:
    """(N, N, S) bool: [k, i, j] is True when sentence j of report i also occurs in report k, k != i.

    ``keys``: (N, S') from :func:`sentence_keys`, cut or zero-padded to ``n_slots`` = S.
    """
    if keys.shape[1] < n_slots:
        keys = F.pad(keys, (0, n_slots - keys.shape[1]))
    keys = keys[:, :n_slots]
    n = keys.shape[0]
    present = keys != 0
    # [k, i, j]: does any slot of report k carry report i's sentence j
    found = (keys[:, None, None, :] == keys[None, :, :, None]).any(dim=-1)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=keys.device)
    return found & present[None] & off_diagonal[:, :, None]


def soft_targets(keys_local: Tensor, keys_all: Tensor) -> Tensor:
    """(B, N) rows summing to 1 over the columns whose report equals the row's report."""
    same = (keys_local[:, None] == keys_all[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _ce(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy with index targets (B,) or probability targets (B, N); mean over rows (>= fp32)."""
    logits = _at_least_fp32(logits)
    if target.is_floating_point():
        target = target.to(logits.dtype)
    return F.cross_entropy(logits, target)


def clip_loss(
    img: Tensor,
    txt: Tensor,
    scale: Tensor,
    img_all: Tensor | None = None,
    txt_all: Tensor | None = None,
    rank: int = 0,
    targets: Tensor | None = None,
) -> Tensor:
    """CLIP loss both ways for this process's rows.

    Args:
        img, txt: (B, E) L2-normalised local features.
        scale: scalar multiplier exp(logit_scale).
        img_all, txt_all: (N, E) gathered features (default: the local ones).
        rank: index of this process (targets are shifted by ``rank * B``).
        targets: optional (B, N) soft targets (identical reports); default one-hot.
    Returns:
        CE(scale * img @ txt_all^T) + CE(scale * txt @ img_all^T), each averaged over the B rows.
    """
    img_all = img if img_all is None else img_all
    txt_all = txt if txt_all is None else txt_all
    tgt = contrastive_targets(img.shape[0], rank, img.device) if targets is None else targets
    return _ce(scale * img @ txt_all.T, tgt) + _ce(scale * txt @ img_all.T, tgt)


def nt_xent_loss(
    z1: Tensor,
    z2: Tensor,
    temperature: float,
    z1_all: Tensor | None = None,
    z2_all: Tensor | None = None,
    rank: int = 0,
) -> Tensor:
    """NT-Xent (SimCLR) between two views, local rows against the gathered 2N candidates.

    Args:
        z1, z2: (B, E) projections of the two views (normalised here).
        temperature: fixed temperature (0.5 in MaMA).
        z1_all, z2_all: (N, E) gathered projections (default: the local ones).
        rank: index of this process.
    Returns:
        mean over the 2B local rows of -log softmax(positive) where each row's candidates are all 2N
        views except itself, and its positive is the other view of the same image.
    """
    z1_all = z1 if z1_all is None else z1_all
    z2_all = z2 if z2_all is None else z2_all
    b, n = z1.shape[0], z1_all.shape[0]
    rows = F.normalize(_at_least_fp32(torch.cat([z1, z2])), dim=-1)
    cols = F.normalize(_at_least_fp32(torch.cat([z1_all, z2_all])), dim=-1)
    logits = rows @ cols.T / temperature
    own = contrastive_targets(b, rank, z1.device)
    self_col = torch.cat([own, own + n])
    pos_col = torch.cat([own + n, own])
    logits = logits.masked_fill(F.one_hot(self_col, 2 * n).bool(), float("-inf"))
    return F.cross_entropy(logits, pos_col)


def soft_max_pool(x: Tensor, dim: int, temperature: float, valid: Tensor | None = None) -> Tensor:
    """``temperature * log(mean_k exp(x_k / temperature))`` over the valid entries along ``dim``.

    A smooth maximum: it lies between the mean (temperature -> inf) and the max (-> 0) and equals
    ``x`` when all entries are equal; its gradient reaches every entry (softmax weights), not only
    the arg-max.  ``valid``: bool mask broadcastable to ``x`` (at least one True along ``dim``).
    """
    z = x / temperature
    count = torch.tensor(float(x.shape[dim]), dtype=x.dtype, device=x.device)
    if valid is not None:
        z = z.masked_fill(~valid, float("-inf"))
        count = valid.expand_as(x).sum(dim=dim).clamp_min(1).to(x.dtype)
    return temperature * (torch.logsumexp(z, dim=dim) - count.log())


def sla_scores(
    patches: Tensor,
    sentences: Tensor,
    sentence_mask: Tensor,
    chunk: int = 8,
    symmetric: bool = True,
    pool: str = "max",
    temperature: float = 0.1,
    shared: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Symmetric local alignment scores between every image and every report.

    Args:
        patches: (Ni, P, E) L2-normalised patch features.
        sentences: (Nt, S, E) L2-normalised sentence features.
        sentence_mask: (Nt, S) bool, True for real sentences.
        chunk: images per chunk of the (chunk, Nt, P, S) similarity tensor.
        symmetric: also compute i2t (else it is None and not computed).
        pool: ``max`` (the reference: best patch / best sentence) or ``logsumexp``
            (:func:`soft_max_pool` at ``temperature``: every patch / sentence gets gradient).
    Returns:
        t2i (Ni, Nt): for each sentence the best patch, averaged over the report's sentences;
        i2t (Ni, Nt): for each patch the best sentence, averaged over the patches (0 for a report
        without sentences).
    Raises:
        ValueError: for a ``pool`` other than ``max`` and ``logsumexp``.
    """
    if pool not in ("max", "logsumexp"):
        raise ValueError(f"sla_scores: pool must be 'max' or 'logsumexp', got {pool!r}")
    valid = sentence_mask.to(patches.dtype)  # (Nt, S)
    n_sent = valid.sum(dim=1).clamp_min(1.0)  # (Nt,)
    has_sent = sentence_mask.any(dim=1)  # (Nt,)
    neg = torch.finfo(patches.dtype).min
    t2i, i2t = [], []
    for start in range(0, patches.shape[0], chunk):
        sim = torch.einsum("ipe,tse->itps", patches[start : start + chunk], sentences)  # (c, Nt, P, S)
        if shared is not None:
            sim = torch.where(shared[start : start + chunk, :, None, :], sim.detach(), sim)
        if pool == "max":
            best_patch = sim.max(dim=2).values  # (c, Nt, S)
        else:
            best_patch = soft_max_pool(sim, 2, temperature)
        t2i.append((best_patch * valid).sum(dim=-1) / n_sent)
        if not symmetric:
            continue
        if pool == "max":
            best_sent = sim.masked_fill(~sentence_mask[None, :, None, :], neg).max(dim=3).values  # (c, Nt, P)
        else:
            best_sent = soft_max_pool(sim, 3, temperature, sentence_mask[None, :, None, :])
        i2t.append(torch.where(has_sent, best_sent.mean(dim=-1), torch.zeros_like(best_sent[..., 0])))
    return torch.cat(t2i), torch.cat(i2t) if symmetric else None


def sla_loss(
    patches: Tensor,
    sentences: Tensor,
    sentence_mask: Tensor,
    scale: Tensor,
    chunk: int = 8,
    targets: Tensor | None = None,
    symmetric: bool = True,
    pool: str = "max",
    temperature: float = 0.1,
    shared: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(text->image, image->text) SLA losses, each CE both ways over scale * score (N x N, local
    batch); image->text is None (and not computed) when ``symmetric`` is false. ``pool``,
    ``temperature`` and ``shared``: see :func:`sla_scores`."""
    t2i, i2t = sla_scores(patches, sentences, sentence_mask, chunk, symmetric, pool, temperature, shared)
    tgt = contrastive_targets(t2i.shape[0], 0, t2i.device) if targets is None else targets
    lt = _ce(scale * t2i, tgt) + _ce(scale * t2i.T, tgt)
    if i2t is None:
        return lt, None
    li = _ce(scale * i2t, tgt) + _ce(scale * i2t.T, tgt)
    return lt, li


def mama_loss(
    out: dict[str, Tensor],
    cfg: LossConfig,
    late: bool,
    info: GatherInfo | None = None,
    keys: Tensor | None = None,
    sentence_keys: Tensor | None = None,
) -> dict[str, Tensor]:
    """The weighted MaMA objective and its terms.

    Args:
        out: model outputs (see :meth:`MamaModel.forward`): ``img``, ``txt`` (B, E) normalised,
            ``scale``, and when ``late``: ``img_extra``, ``ii1``, ``ii2``, ``patches``,
            ``sentences``, ``sentence_mask``, ``local_scale``.
        cfg: switches, weights, temperatures.
        late: whether the step is at or after ``late_loss``.
        info: gather set-up (default: single process).
        keys: (B,) report keys for de-duplicated soft targets (used when ``cfg.dedup_reports``).
        sentence_keys: (B, S') keys of the report's sentences (:func:`sentence_keys`); needed when
            ``cfg.sla_shared_sentences`` is ``detach``.
    Returns:
        ``{"loss": total, "clip": ..., "nt_xent": ..., "clip_extra": ..., "sla_t2i": ..., "sla_i2t": ...}``
        (only the computed terms; each unweighted).
    """
    info = info or GatherInfo()
    rank = info.rank if info.active else 0  # without gathering, targets index the local batch
    terms: dict[str, Tensor] = {}
    total = out["img"].new_zeros((), dtype=torch.float32)
    targets = sla_targets = None
    if cfg.dedup_reports and keys is not None:
        keys = keys.to(out["img"].device)
        targets = soft_targets(keys, gather_no_grad(keys, info))
        sla_targets = soft_targets(keys, keys)
    txt_all = gather_with_grad(out["txt"], info)
    if cfg.clip:
        img_all = gather_with_grad(out["img"], info)
        terms["clip"] = clip_loss(out["img"], out["txt"], out["scale"], img_all, txt_all, rank, targets)
        total = total + cfg.w_clip * terms["clip"]
    if not late:
        terms["loss"] = total
        return terms
    if cfg.clip_extra:
        extra_all = gather_with_grad(out["img_extra"], info)
        terms["clip_extra"] = clip_loss(
            out["img_extra"], out["txt"], out["scale"], extra_all, txt_all, rank, targets
        )
        total = total + cfg.w_clip_extra * terms["clip_extra"]
    if cfg.nt_xent:
        z1_all, z2_all = gather_with_grad(out["ii1"], info), gather_with_grad(out["ii2"], info)
        terms["nt_xent"] = nt_xent_loss(out["ii1"], out["ii2"], cfg.nt_xent_temperature, z1_all, z2_all, rank)
        total = total + cfg.w_nt_xent * terms["nt_xent"]
    if cfg.sla:
        shared = None
        if cfg.sla_shared_sentences == "detach":
            if sentence_keys is None:
                raise ValueError("loss.sla_shared_sentences=detach needs the batch's sentence keys")
            shared = shared_sentences(sentence_keys.to(out["sentences"].device), out["sentences"].shape[1])
        lt, li = sla_loss(
            out["patches"],
            out["sentences"],
            out["sentence_mask"],
            out["local_scale"],
            cfg.sla_chunk,
            sla_targets,
            cfg.sla_symmetric,
            cfg.sla_pool,
            cfg.sla_pool_temperature,
            shared,
        )
        terms["sla_t2i"] = lt
        total = total + cfg.w_sla * lt
        if li is not None:
            terms["sla_i2t"] = li
            total = total + cfg.w_sla * li
    terms["loss"] = total
    return terms
