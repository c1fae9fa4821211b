"""The "multi-site expert": a 2D ResNet encoder and two U-Net decoders (target and source).

Our implementation of the architecture described by You et al. 2022 (ITL, arXiv 2206.01369): a
site-agnostic ResNet encoder (18 in the paper's figures; 34/50 as options, registered by name in
:data:`ITL_ARCHS`) shared by a *target*
decoder (trained on the current site, used at test time) and one *source* decoder (the previous
phase's target decoder).  Both heads exist from the start, so the parameter count is the same in
every phase and does not grow with the number of sites.

The encoder's parameter names follow torchvision's ResNet state dict (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ...), so a local torchvision checkpoint maps onto
it with :func:`load_pretrained` (``fc.*`` is dropped; a 1- or 5-channel input gets the summed /
tiled RGB stem filters).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medlearn.engine.registry import Registry
from medlearn.errors import DataError

if TYPE_CHECKING:
    from medlearn.itl.config import ModelConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- blocks
class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, out, stride) if (stride != 1 or cin != out) else None

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNetEncoder(nn.Module):
    """2D ResNet trunk returning the five feature maps a U-Net decoder needs.

    Built by name through :func:`build_encoder` (``resnet18``, ``resnet34``, ``resnet50``).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        depths: blocks in each of the four stages, e.g. (2, 2, 2, 2) for ResNet-18.
        in_chans: input channels (1 slice or 3 adjacent slices).
        width: stem channels (64 reproduces torchvision; smaller for CPU tests).

    Shapes:
        input (B, C, H, W) -> [(B, w, H/2, W/2), (B, w*e, H/4, W/4), (B, 2w*e, H/8, W/8),
        (B, 4w*e, H/16, W/16), (B, 8w*e, H/32, W/32)] with e = block expansion (ceil sizes).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        in_chans: int = 1,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        self.channels = [width]
        for i, n in enumerate(depths):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.channels.append(cin)
        self.in_chans = in_chans

    def forward(self, x: Tensor) -> list[Tensor]:
        s = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(s))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [s, f1, f2, f3, self.layer4(f3)]


ITL_ARCHS: Registry[ResNetEncoder] = Registry("ITL encoder")


@ITL_ARCHS.register("resnet18")
def resnet18(in_chans: int = 1, width: int = 64) -> ResNetEncoder:
    """ResNet-18 trunk: basic blocks (2, 2, 2, 2) (the paper's figures)."""
    return ResNetEncoder(BasicBlock, (2, 2, 2, 2), in_chans, width)


@ITL_ARCHS.register("resnet34")
def resnet34(in_chans: int = 1, width: int = 64) -> ResNetEncoder:
    """ResNet-34 trunk: basic blocks (3, 4, 6, 3)."""
    return ResNetEncoder(BasicBlock, (3, 4, 6, 3), in_chans, width)


@ITL_ARCHS.register("resnet50")
def resnet50(in_chans: int = 1, width: int = 64) -> ResNetEncoder:
    """ResNet-50 trunk: bottleneck blocks (3, 4, 6, 3), 4x expansion."""
    return ResNetEncoder(Bottleneck, (3, 4, 6, 3), in_chans, width)


def build_encoder(arch: str = "resnet18", in_chans: int = 1, width: int = 64) -> ResNetEncoder:
    """The encoder registered as ``arch`` in :data:`ITL_ARCHS`.

    Raises:
        ConfigError: for an unknown name, listing the registered ones.
    """
    return ITL_ARCHS.build(arch, in_chans=in_chans, width=width)


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin + cskip, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], 1)
        return self.conv(x)


class UNetDecoder(nn.Module):
    """U-Net decoder over the encoder's five feature maps, ending at the input resolution.

    Args:
        encoder_channels: channels of the five encoder maps (shallow first).
        channels: five decoder stage widths (deepest first).
        num_classes: output logits.

    Shapes:
        features as returned by :class:`ResNetEncoder`, ``out_size`` (H, W) -> (B, num_classes, H, W).
    """

    def __init__(self, encoder_channels: list[int], channels: list[int], num_classes: int = 2) -> None:
        super().__init__()
        skips = list(reversed(encoder_channels[:-1])) + [0]
        cin = encoder_channels[-1]
        blocks = []
        for c, s in zip(channels, skips):
            blocks.append(DecoderBlock(cin, s, c))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, feats: list[Tensor], out_size: tuple[int, int]) -> Tensor:
        x = feats[-1]
        skips = list(reversed(feats[:-1]))
        for i, blk in enumerate(self.blocks):
            skip = skips[i] if i < len(skips) else None
            x = blk(x, skip, tuple(skip.shape[-2:]) if skip is not None else out_size)
        return self.head(x)


class MultiSiteExpert(nn.Module):
    """Shared encoder + target decoder + source decoder (constant parameter count).

    Args:
        arch: a name registered in :data:`ITL_ARCHS`.
        in_chans, width: encoder options (see :class:`ResNetEncoder`).
        decoder_channels: decoder stage widths (deepest first).
        num_classes: output classes.

    Example:
        >>> m = MultiSiteExpert("resnet18", 1, 8, [16, 8, 8, 8, 8])
        >>> m(torch.zeros(2, 1, 40, 40)).shape
        torch.Size([2, 2, 40, 40])
    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_chans: int = 1,
        width: int = 64,
        decoder_channels: list[int] | None = None,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        decoder_channels = decoder_channels or [256, 128, 64, 32, 16]
        self.encoder = build_encoder(arch, in_chans, width)
        self.target_decoder = UNetDecoder(self.encoder.channels, decoder_channels, num_classes)
        self.source_decoder = copy.deepcopy(self.target_decoder)
        for p in self.source_decoder.parameters():
            p.requires_grad_(False)

    def encode(self, x: Tensor) -> list[Tensor]:
        return self.encoder(x)

    def decode(self, feats: list[Tensor], out_size: tuple[int, int], head: str = "target") -> Tensor:
        """Logits (B, K, H, W) from encoder features through the ``target`` or ``source`` decoder."""
        dec = self.target_decoder if head == "target" else self.source_decoder
        return dec(feats, out_size)

    def forward(self, x: Tensor, step: Callable[..., Any] | None = None, **kw: Any) -> Any:
        """Logits (B, K, H, W) of ``x``; with ``step``, ``step(self, x, **kw)`` instead.

        ``step`` lets a training step use several heads and passes (encode, decode, source
        decoder, mixed features) inside *one* call of the module, which is what
        ``DistributedDataParallel`` needs to synchronise the gradients of everything it used.
        """
        if step is not None:
            return step(self, x, **kw)
        return self.decode(self.encode(x), tuple(x.shape[-2:]))

    def sync_source_from_target(self, trainable: bool = False) -> None:
        """Copy the target decoder into the source decoder (start of a new phase)."""
        self.source_decoder.load_state_dict(self.target_decoder.state_dict())
        for p in self.source_decoder.parameters():
            p.requires_grad_(trainable)


@contextmanager
def batch_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Inside: every BatchNorm of ``module`` normalises with the batch's statistics (train-mode
    arithmetic) but leaves its running statistics untouched; restored on exit.

    Used for passes whose inputs are not real samples (ITL's mixed features) and for a frozen
    teacher that should normalise exactly as the student does on the same batch.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in bns]
    for m in bns:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(bns, saved):
            m.training, m.track_running_stats = training, track


def build_model(cfg: ModelConfig, in_chans: int) -> MultiSiteExpert:
    """A :class:`MultiSiteExpert` from a ``ModelConfig``; loads ``cfg.pretrained`` when set."""
    model = MultiSiteExpert(cfg.arch, in_chans, cfg.width, list(cfg.decoder_channels), cfg.num_classes)
    if cfg.pretrained:
        load_pretrained(model.encoder, cfg.pretrained)
    return model


# ---------------------------------------------------------------------------------------------- pretrained weights
def adapt_stem(weight: Tensor, in_chans: int) -> Tensor:
    """Adapt an RGB stem kernel (O, 3, k, k) to ``in_chans`` inputs.

    1 channel: sum over RGB (a grey image replicated to RGB gives the same response). 3: unchanged.
    Otherwise: tile the RGB filters and rescale by 3 / in_chans so the response magnitude is kept.
    """
    cin = weight.shape[1]
    if in_chans == cin:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_chans // cin)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (cin / in_chans)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a torch file (plain dict, or under ``state_dict``/``model``).

    Raises:
        DataError: the file is missing or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model.pretrained: checkpoint '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"model.pretrained: '{path}' is not a readable torch checkpoint: {exc}") from None
        for key in ("state_dict", "model"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
    if not isinstance(sd, dict) or not any(isinstance(v, Tensor) for v in sd.values()):
        raise DataError(f"model.pretrained: '{path}' holds no tensors")
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "encoder.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def load_pretrained(encoder: ResNetEncoder, path: str | Path) -> list[str]:
    """Map a torchvision-format ResNet state dict onto ``encoder``; returns the dropped keys.

    ``fc.*`` is dropped, ``conv1.weight`` is adapted to ``encoder.in_chans`` (:func:`adapt_stem`).

    Raises:
        DataError: an encoder parameter is missing from the file or has another shape (e.g. a
            ResNet-50 checkpoint for a ResNet-18 encoder, or ``model.width`` != 64).
    """
    sd = read_state_dict(path)
    own = encoder.state_dict()
    dropped = [k for k in sd if k not in own]
    if "conv1.weight" in sd:
        sd["conv1.weight"] = adapt_stem(sd["conv1.weight"], encoder.in_chans)
    for k in own:  # old torchvision files lack the BatchNorm step counters
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = own[k]
    missing = [k for k in own if k not in sd]
    if missing:
        raise DataError(
            f"model.pretrained '{path}' lacks encoder weights {missing[:5]} ({len(missing)} in all)"
        )
    bad = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if sd[k].shape != v.shape
    ]
    if bad:
        raise DataError(f"model.pretrained '{path}' does not fit the encoder: {bad[:3]} ({len(bad)} in all)")
    encoder.load_state_dict({k: sd[k] for k in own})
    log.info("pretrained encoder loaded from %s (dropped %d keys: %s)", path, len(dropped), dropped[:4])
    return dropped
