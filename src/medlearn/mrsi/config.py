"""Typed configuration of the MRSI task (YAML presets in ``configs/mrsi/``).

Defaults reproduce the paper configuration (64x64 maps, channels 8-16-32-64-128, batch 8, Adam
1e-4 (0.5, 0.9), step decay x0.5 every 40 epochs, 100 epochs, n_critic 5, GP weight 10) with our
improvements switched on; the switches that restore the reference are named in ``docs/mrsi.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medlearn.engine.options import EngineConfig
from medlearn.errors import ConfigError
from medlearn.mrsi.baselines import ARCH_SWITCHES
from medlearn.mrsi.constants import METABOLITES

__all__ = [
    "AdversarialConfig",
    "CriticConfig",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "MRSIConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
]


@dataclass
class DataConfig:
    """Where the data is and how it is split and sampled.

    Attributes:
        root: folder with one sub-folder per patient (npy or nifti layout).
        layout: ``auto``, ``npy`` or ``nifti``.
        conc_kind: nifti only: sub-folder of ``concs/`` (e.g. ``molarity``); null reads ``concs/``.
        metabolites: metabolites to train on (ids follow ``constants.METABOLITES``).
        n_choices: window half-sizes n drawn in training (low-resolution matrix 2n).
        fold, k_folds, n_val, n_test, split_seed: patient-level cross-validation.
        splits_file: JSON written by ``write_splits``; when set it overrides the k-fold draw.
        mask_rule: ``map`` (reference, HR != 0) or ``patient`` (quality-mask file).
        augment: random rot90 / flips / shifts / slab flip in training.
        max_shift: largest circular shift in map pixels.
    """

    root: str = "data/mrsi_synth/npy"
    layout: str = "auto"
    conc_kind: str | None = None
    metabolites: list[str] = field(default_factory=lambda: list(METABOLITES))
    n_choices: list[int] = field(default_factory=lambda: list(range(8, 17)))
    fold: int = 0
    k_folds: int = 5
    n_val: int = 3
    n_test: int = 3
    split_seed: int = 0
    splits_file: str | None = None
    mask_rule: str = "map"
    augment: bool = True
    max_shift: int = 3


@dataclass
class ModelConfig:
    """Generator architecture (see :mod:`medlearn.mrsi.baselines` for ``arch`` names).

    Attributes:
        arch: ``mcm`` (full), ``fs_nm``, ``fs_n``, ``single_scale``, ``hypernetwork``, ``adaptive_modulation``.
        base_width: first level channels (8 = paper); depth: levels incl. bottleneck (5).
        latent: conditioning MLP width (32); met_embed_dim: metabolite embedding (3).
        per_sample: per-sample conditions in mixed batches (ours, default); false = the reference's
            one condition per batch (batches grouped by metabolite, one n and one lambda per batch).
        data_consistency: ``reference`` (magnitude), ``real`` or ``off``.
        gamma_init: initial gamma bias of conditional IN (reference 1.0).
        lambda_scale: multiplier on lambda before the conditional-IN MLPs; null (ours, default) =
            1 / (adversarial.lambda_low + lambda_span), so the MLPs see values in [0, 1]; 1.0 feeds raw
            lambda as the reference does.
        batched_conditioning: evaluate all conditioning MLPs (Filter Scaling, conditional IN) once
            per forward as stacked batched matmuls (default); false runs each layer's MLPs in its
            block (the same numbers up to float rounding; slower).
        lambda_offset: conditional IN as ``base + S(lambda) - S(0)`` (default): at lambda = 0 every
            norm is a plain learned affine that does not depend on the lambda MLP; false = the
            reference ``S(lambda)``.  See docs/mrsi.md (sharpness knob).
        channels_last: generator and critic keep 5-D activations and kernels in channels-last
            order (default; the same numbers up to float rounding, faster oneDNN convolutions on
            CPU); false = PyTorch's default order.
        planar_ops: convolutions, max pools and resampling that leave the slab axis alone (or
            collapse it whole, as the critic's first layer) run as their 2D versions (default; the
            same numbers up to float rounding, 2-5x faster on a CPU for those layers); false = 3D
            operations everywhere, as the reference.
        split_conv_layout: on CPU, the generator's 3D convolutions run their forward in the plain
            layout (channels-last when a group has fewer than 4 input channels) and their backward
            in channels-last, whatever layout the activations arrive in (default; the same numbers
            up to float rounding; oneDNN's faster kernel for each pass at these shapes, see
            docs/mrsi.md); false = each convolution in its input's layout (set by
            ``channels_last``), as before.  No effect on a GPU.
    """

    arch: str = "mcm"
    base_width: int = 8
    depth: int = 5
    latent: int = 32
    met_embed_dim: int = 3
    per_sample: bool = True
    data_consistency: str = "reference"
    gamma_init: float = 1.0
    lambda_scale: float | None = None
    batched_conditioning: bool = True
    lambda_offset: bool = True
    channels_last: bool = True
    planar_ops: bool = True
    split_conv_layout: bool = True


@dataclass
class CriticConfig:
    """WGAN critic: ``n_blocks`` strided convs of width ``width * 2**i``, then linear ``hidden`` -> 1."""

    arch: str = "critic3d"
    width: int = 32
    n_blocks: int = 4
    hidden: int = 16


@dataclass
class LossConfig:
    """Content loss ``l1_weight * L1 + ssim_weight * (1 - MS-SSIM)``.

    Attributes:
        ssim_upsample: bicubic factor before MS-SSIM (3 = reference 64 -> 192).
        ssim_win: Gaussian window (11 reference; must be < side/16 + 1 after upsampling).
        ssim_levels: MS-SSIM scales (5 reference; 1 = SSIM).
        ssim_data_range: ``sample`` (ours, default): each map's MS-SSIM uses its own target's range
            (max - min), so a sample's loss does not depend on its batch-mates and 2 ranks x half a
            batch equal 1 x the whole batch; ``batch`` (reference): one range for the whole batch.
    """

    l1_weight: float = 0.16
    ssim_weight: float = 0.84
    ssim_upsample: int = 3
    ssim_win: int = 11
    ssim_levels: int = 5
    ssim_data_range: str = "sample"


@dataclass
class AdversarialConfig:
    """Conditional WGAN-GP and the lambda (sharpness) schedule.

    Attributes:
        enabled: train with the critic; false = non-adversarial (lambda is always 0).
        lambda_low, lambda_span: lambda ~ U[lambda_low, lambda_low + lambda_span] (a0, a1; not
            published; 0 and 1 here, see docs/mrsi.md).
        zero_fraction: probability that lambda is 0 (10% in the reference).
        fixed_lambda: train with this constant lambda instead (fixed-lambda conditional GAN baseline).
        n_critic: critic steps per generator step (5); gp_weight: gradient-penalty weight (10).
        route: which generator parameters the adversarial term trains: ``decoupled`` (default:
            only the lambda MLPs of the conditional norms, and the shared weights learn from the
            content loss at lambda = 0 only, in a second forward, so the lambda = 0 output is
            trained as the non-adversarial model is), ``lambda_path`` (the adversarial term trains
            the lambda MLPs only; the content loss at the drawn lambda trains everything) or
            ``all`` (reference).  Architectures without conditional
            norms train all.  See docs/mrsi.md (sharpness knob).
    """

    enabled: bool = True
    lambda_low: float = 0.0
    lambda_span: float = 1.0
    zero_fraction: float = 0.1
    fixed_lambda: float | None = None
    n_critic: int = 5
    gp_weight: float = 10.0
    route: str = "decoupled"


@dataclass
class OptimConfig:
    """Adam for both networks with step decay ``gamma`` every ``step_epochs`` epochs.

    ``fused``: PyTorch's fused Adam kernel (CPU and CUDA; same update up to float rounding);
    false = the default multi-tensor Adam.
    """

    lr: float = 1e-4
    critic_lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    step_epochs: int = 40
    gamma: float = 0.5
    fused: bool = True


@dataclass
class TrainConfig:
    """Loop length and outputs.

    Attributes:
        out: run folder (config.yaml, env.json, metrics.jsonl, checkpoints/, best/).
        epochs, batch_size: 100 and 8 in the paper.
        max_steps: stop after this many generator steps (0 = no limit); a checkpoint is written.
        val_every: optimizer (generator) steps between validations, the unit of every task; 0 =
            after every epoch (the reference's cadence, default). Model selection is on the
            validation content loss.
        val_max_items: cap on validation samples (0 = all).
        resume: continue from the newest checkpoint in ``out`` when there is one.
    """

    out: str = "runs/mrsi/paper"
    epochs: int = 100
    batch_size: int = 8
    max_steps: int = 0
    val_every: int = 0
    val_max_items: int = 0
    resume: bool = True


@dataclass
class EvalConfig:
    """Evaluation grid: n values, lambda values, which split, how many items."""

    ns: list[int] = field(default_factory=lambda: [8, 10, 12, 14, 16])
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    split: str = "test"
    batch_size: int = 16
    max_items: int = 0
    figure_slices: int = 1


@dataclass
class MRSIConfig:
    """Everything a run needs; ``engine`` holds device, precision, seed and checkpoint cadence."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        validate(self)


def validate(cfg: MRSIConfig) -> None:
    """Raise :class:`ConfigError` naming the key for values that cannot work."""
    if cfg.model.arch not in ARCH_SWITCHES:
        raise ConfigError(f"model.arch='{cfg.model.arch}' is not one of {', '.join(ARCH_SWITCHES)}")
    if cfg.model.data_consistency not in ("reference", "real", "off"):
        raise ConfigError(
            f"model.data_consistency='{cfg.model.data_consistency}' is not reference, real or off"
        )
    if cfg.data.mask_rule not in ("map", "patient"):
        raise ConfigError(f"data.mask_rule='{cfg.data.mask_rule}' is not 'map' or 'patient'")
    if not cfg.data.n_choices or min(cfg.data.n_choices) < 1:
        raise ConfigError(f"data.n_choices must be non-empty positive integers, got {cfg.data.n_choices}")
    if cfg.adversarial.n_critic < 1:
        raise ConfigError(f"adversarial.n_critic must be >= 1, got {cfg.adversarial.n_critic}")
    if not 0.0 <= cfg.adversarial.zero_fraction <= 1.0:
        raise ConfigError(f"adversarial.zero_fraction must be in [0, 1], got {cfg.adversarial.zero_fraction}")
    if cfg.adversarial.lambda_span < 0 or cfg.adversarial.lambda_low < 0:
        raise ConfigError("adversarial.lambda_low and lambda_span must be >= 0")
    if cfg.adversarial.route not in ("all", "lambda_path", "decoupled"):
        raise ConfigError(
            f"adversarial.route='{cfg.adversarial.route}' is not one of all, lambda_path, decoupled"
        )
    if cfg.loss.ssim_data_range not in ("sample", "batch"):
        raise ConfigError(f"loss.ssim_data_range='{cfg.loss.ssim_data_range}' is not 'sample' or 'batch'")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must have 2 values, got {cfg.optim.betas}")
    if cfg.train.batch_size < 1 or cfg.train.epochs < 1:
        raise ConfigError("train.batch_size and train.epochs must be >= 1")
    if cfg.engine.grad_accum_steps != 1:
        raise ConfigError(
            "engine.grad_accum_steps must be 1 for the MRSI GAN (critic and generator alternate per batch)"
        )
    if cfg.eval.split not in ("train", "val", "test"):
        raise ConfigError(f"eval.split='{cfg.eval.split}' is not train, val or test")
    if not 1 <= cfg.loss.ssim_levels <= 5 or cfg.loss.ssim_win % 2 == 0:
        raise ConfigError(
            f"loss.ssim_levels must be 1..5 and loss.ssim_win odd; got {cfg.loss.ssim_levels}, {cfg.loss.ssim_win}"
        )
