"""Typed configuration of the ``itl`` task (presets in ``configs/itl/*.yaml``).

Every switch that encodes one of our assumptions where the ITL paper is silent lives in
:class:`ITLOptions`; see ``docs/itl.md`` for what each one means and which is the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

from medlearn.engine import EngineConfig
from medlearn.errors import ConfigError

StrategyName = Literal["individual", "joint", "sequential", "replay", "lwf", "ewc", "itl"]
ArchName = Literal["resnet18", "resnet34", "resnet50"]
STRATEGIES: tuple[str, ...] = get_args(StrategyName)
ARCHS: tuple[str, ...] = get_args(ArchName)


@dataclass
class DataConfig:
    """Where the volumes are and how they become 2D training slices.

    Attributes:
        root: dataset folder (site folders, or an nnU-Net dataset with ``layout: nnunet``).
        layout: ``sites`` (``SITE/CaseXX.nii.gz`` + ``CaseXX_segmentation.nii.gz``) or ``nnunet``.
        sites: the training sequence, in phase order.
        heldout: sites never trained on (the unseen target), evaluated after every phase.
        cache_dir: prepared (resampled, normalised) volumes and ``splits.json``; empty = ``<root>/.itl_cache``.
        spacing_mm: target in-plane spacing after resampling.
        size: in-plane crop/pad size (pixels) after resampling.
        context: 1 (single slice) or 3 (slice and its two neighbours as channels).
        margin: slices kept above/below the prostate's z-range for training.
        train_frac, val_frac: per-site case fractions; the rest is the test split.
        split_seed: seed of the case-level split.
        max_cases_per_site: use at most this many cases per site (0 = all).
        strict_affine: an image/mask affine mismatch is an error (``True``) or a warning.
        augment: random left-right flips and intensity jitter during training.
    """

    root: str = "data/itl"
    layout: Literal["sites", "nnunet"] = "sites"
    sites: list[str] = field(default_factory=lambda: ["RUNMC", "BMC", "I2CVB", "UCL", "BIDMC"])
    heldout: list[str] = field(default_factory=lambda: ["HK"])
    cache_dir: str = ""
    spacing_mm: float = 0.5
    size: int = 384
    context: int = 1
    margin: int = 2
    train_frac: float = 0.6
    val_frac: float = 0.0
    split_seed: int = 0
    max_cases_per_site: int = 0
    strict_affine: bool = True
    augment: bool = True

    def __post_init__(self) -> None:
        if self.context not in (1, 3):
            raise ConfigError(f"data.context must be 1 or 3, got {self.context}")
        if not 0 < self.train_frac <= 1 or not 0 <= self.val_frac < 1 or self.train_frac + self.val_frac > 1:
            raise ConfigError(
                f"data.train_frac={self.train_frac} and data.val_frac={self.val_frac} must be in (0, 1] "
                "and sum to at most 1"
            )
        if self.spacing_mm <= 0 or self.size < 8:
            raise ConfigError(
                f"data.spacing_mm must be > 0 and data.size >= 8 (got {self.spacing_mm}, {self.size})"
            )
        overlap = set(self.sites) & set(self.heldout)
        if overlap:
            raise ConfigError(f"data.heldout site(s) {sorted(overlap)} are also in data.sites")
        if not self.sites:
            raise ConfigError("data.sites is empty: give at least one training site")


@dataclass
class ModelConfig:
    """ResNet encoder + U-Net decoders (a target decoder and one source decoder).

    Attributes:
        arch: ``resnet18`` (default, as in the paper's figures), ``resnet34`` or ``resnet50``.
        width: channels of the stem (64 = torchvision widths; smaller for CPU tests).
        pretrained: local torchvision-format ResNet state dict (``.pth``/``.safetensors``); empty = random init.
        decoder_channels: channels of the 5 decoder stages (deepest first).
        num_classes: output classes (2: background, prostate).
    """

    arch: ArchName = "resnet18"
    width: int = 64
    pretrained: str = ""
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    num_classes: int = 2

    def __post_init__(self) -> None:
        if len(self.decoder_channels) != 5:
            raise ConfigError(f"model.decoder_channels needs 5 entries, got {self.decoder_channels}")


@dataclass
class ITLOptions:
    """The ITL method's parts; each is one of our assumptions where the paper is silent and can be switched off.

    Attributes:
        feature_mix: mix encoder features of exemplars and new data (ASSUMPTION: convex mixup in
            feature space, ``lam*z_old + (1-lam)*z_new`` at every encoder level); off = no mixing.
        mix_beta: ``lam ~ Beta(mix_beta, mix_beta)``.
        mix_weight: weight of the mixed-feature term inside L_target.
        source_mode: ``teacher`` (source decoder = previous target decoder, frozen), ``trainable``
            (a trained copy) or ``none`` (no source decoder losses).
        alpha: weight of L_source (Dice+CE of exemplars through the source decoder).
        beta: weight of L_site (KL between target and source decoder outputs on old sites).
        temperature: KL temperature T (the loss is scaled by T^2).
        site_weights: ``uniform`` over old sites, or ``size`` (proportional to exemplar count).
        teacher: what L_site distils from. ``model`` (default): the frozen previous model F_{k-1}
            (its own encoder and target decoder) on the exemplars, so the old sites stay anchored
            to what F_{k-1} predicted. ``decoder`` (the behaviour before this switch): the
            source decoder applied to the features of the encoder that is still training.
        teacher_bn: how the frozen networks (F_{k-1}, and the source decoder when
            ``source_mode=teacher``) normalise. ``running`` (default, and the behaviour before this
            switch): eval mode, i.e. what F_{k-1} predicts when deployed (L_site > 0 at the start of a
            phase although the weights are identical, because the student normalises with batch
            statistics). ``batch``: with the statistics of the step's batch (new slices +
            exemplars), as the student does, without updating running statistics, so identical
            weights give L_site = 0 exactly; it scored lower ACC on all 3 benchmark seeds.
        mix_bn_stats: the feature-mix pass updates the target decoder's BatchNorm running
            statistics (``true``, the behaviour before this switch) or only uses the mixed
            batch's statistics and leaves the running statistics to real samples (``false``).
    """

    feature_mix: bool = True
    mix_beta: float = 0.4
    mix_weight: float = 0.5
    source_mode: Literal["teacher", "trainable", "none"] = "teacher"
    alpha: float = 0.5
    beta: float = 1.0
    temperature: float = 2.0
    site_weights: Literal["uniform", "size"] = "uniform"
    teacher: Literal["model", "decoder"] = "model"
    teacher_bn: Literal["running", "batch"] = "running"
    mix_bn_stats: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.mix_beta <= 0:
            raise ConfigError("itl.temperature and itl.mix_beta must be > 0")


@dataclass
class TrainConfig:
    """The phase loop, the run folder and the strategy-specific weights.

    Attributes:
        out: run folder (config.yaml, env.json, metrics.jsonl, checkpoints/, results.json, summary.json).
        strategy: individual, joint, sequential, replay, lwf, ewc or itl.
        steps_per_phase: optimizer steps in each phase (the same budget for every strategy).
        batch_size: new-site slices per optimizer step, over all processes and accumulated
            micro-batches (each of the ``world size x engine.grad_accum_steps`` shares draws its
            part of the same global batch).
        memory_batch: exemplar slices per optimizer step (strategies with a memory), shared the same way.
        memory_per_site: exemplar slices kept per past site.
        selection: exemplar selection, ``random`` or ``herding`` (closest running mean of features).
        lwf_weight, lwf_temperature: LwF distillation weight and temperature (5 and 2: the best
            ACC of a sweep over weight 1/5/20 and T 1/2 on the benchmark; the first default was 1).
        ewc_lambda: EWC penalty weight (1e5: the best ACC of a sweep over 1e2..1e5 on the benchmark;
            the first default was 100, indistinguishable from sequential fine-tuning);
            ewc_samples: slices used to estimate the Fisher.
        eval_batch: slices per inference batch.
        memory_format: ``channels_last`` (NHWC convolutions, faster on recent GPUs with AMP and,
            measured in alternated runs, on a 2-core CPU too: tiny preset 1.2x, demo 1.1x),
            ``contiguous`` (NCHW, the behaviour before this switch) or ``auto`` (channels_last on
            every device; it kept NCHW on a CPU until the CPU measurement).
        largest_cc: keep only the largest connected component of 3D predictions.
        resume: continue from the run folder's newest checkpoint when there is one.
    """

    out: str = "runs/itl"
    strategy: StrategyName = "itl"
    steps_per_phase: int = 200
    batch_size: int = 8
    memory_batch: int = 4
    memory_per_site: int = 32
    selection: Literal["random", "herding"] = "random"
    lwf_weight: float = 5.0
    lwf_temperature: float = 2.0
    ewc_lambda: float = 1.0e5
    ewc_samples: int = 64
    eval_batch: int = 16
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    largest_cc: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        if self.steps_per_phase < 1 or self.batch_size < 1:
            raise ConfigError("train.steps_per_phase and train.batch_size must be >= 1")


@dataclass
class OptimConfig:
    """AdamW, fresh in every phase, with a per-phase schedule.

    Attributes:
        lr, weight_decay: AdamW settings.
        schedule: ``constant`` or ``cosine`` (over the phase's steps).
        warmup_steps: cosine warm-up steps.
        fused: torch's fused AdamW kernel (CPU and CUDA; one kernel for all parameters).
            ``false`` = torch's default implementation (the behaviour before this switch).
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 0
    fused: bool = True


@dataclass
class ITLConfig:
    """The whole ``itl`` configuration (``medlearn itl train --config configs/itl/small.yaml``)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "out": "train.out",
        "train.lr": "optim.lr",
        "train.weight_decay": "optim.weight_decay",
        "train.schedule": "optim.schedule",
        "train.warmup_steps": "optim.warmup_steps",
    }
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    itl: ITLOptions = field(default_factory=ITLOptions)
    engine: EngineConfig = field(default_factory=EngineConfig)
