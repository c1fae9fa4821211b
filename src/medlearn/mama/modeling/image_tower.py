"""Image tower: DINOv2 ViT with register tokens (Darcet et al. 2024) through Hugging Face transformers.

The global image feature follows the MaMA recipe: the mean over ALL tokens (CLS, registers and
patches) of the last block's output *before* the final LayerNorm.  We read that tensor from
``output_hidden_states`` (its last entry is the last block's output; transformers applies the final
LayerNorm only to ``last_hidden_state``).  The patch tokens (without CLS and registers) feed the
symmetric local alignment; as in the reference (``x_norm_patchtokens``) they are taken *after* the
final LayerNorm (``patch_tokens: post_norm``; ``pre_norm`` takes them from the pooled tensor).  The
final LayerNorm's parameters are frozen either way, as in the reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medlearn.errors import ConfigError
from medlearn.mama.config import ImageTowerConfig

log = logging.getLogger(__name__)

ARCH_KEYS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
    "num_register_tokens", "layerscale_value", "mlp_ratio", "drop_path_rate", "use_swiglu_ffn",
)  # fmt: skip


@dataclass
class ImageFeatures:
    """Outputs of :class:`ImageTower`.

    Attributes:
        pooled: (B, D) mean of all tokens before the final LayerNorm.
        patches: (B, P, D) patch tokens (no CLS, no registers), after the final LayerNorm
            (``patch_tokens: post_norm``) or before it (``pre_norm``).
    """

    pooled: Tensor
    patches: Tensor


def enable_checkpointing(model: nn.Module, every_n_layers: int = 1) -> None:
    """Non-reentrant activation checkpointing of a transformers model (every ``every_n_layers``-th layer)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers
        )
    else:  # transformers < 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_attention(key: str, value: str) -> None:
    """Refuse ``flash_attention_2`` when the flash-attn package is missing (it needs a CUDA GPU too).

    Raises:
        ConfigError: naming the key.
    """
    if value != "flash_attention_2":
        return
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(f"{key}=flash_attention_2 needs the flash-attn package and a CUDA GPU; use sdpa")


def build_dinov2(cfg: ImageTowerConfig) -> nn.Module:
    """A ``Dinov2WithRegistersModel`` from a hub name / local directory, or random from ``cfg.arch``.

    Raises:
        ConfigError: for unknown ``arch`` keys or a model that cannot be loaded.
    """
    from transformers import AutoModel, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    check_attention("model.image.attn_implementation", cfg.attn_implementation)
    if cfg.name == "random":
        unknown = sorted(set(cfg.arch) - set(ARCH_KEYS))
        if unknown:
            raise ConfigError(f"model.image.arch has unknown key(s) {unknown}; valid: {', '.join(ARCH_KEYS)}")
        hf_cfg = Dinov2WithRegistersConfig(image_size=cfg.image_size, **cfg.arch)
        hf_cfg._attn_implementation = cfg.attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = Dinov2WithRegistersModel(hf_cfg)
        return model
    try:
        model = AutoModel.from_pretrained(cfg.name, attn_implementation=cfg.attn_implementation)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.image.name='{cfg.name}': cannot load the image tower ({exc})") from None
    return model


class ImageTower(nn.Module):
    """DINOv2-with-registers backbone returning pooled and patch features.

    Args:
        cfg: tower options (name or random arch, image size, checkpointing, attention kernel).

    Shapes:
        input (B, 3, H, W) normalised images; H and W multiples of the patch size.
    """

    def __init__(self, cfg: ImageTowerConfig) -> None:
        super().__init__()
        self.backbone = build_dinov2(cfg)
        hf = self.backbone.config
        self.width = int(hf.hidden_size)
        self.num_prefix = 1 + int(getattr(hf, "num_register_tokens", 0))
        self.post_norm_patches = cfg.patch_tokens == "post_norm"
        # frozen: the final LayerNorm (MaMA freezes it) and the masked-image token (unused)
        for name, p in self.backbone.named_parameters():
            if not cfg.trainable or name.startswith("layernorm.") or name.endswith("mask_token"):
                p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            enable_checkpointing(self.backbone, cfg.checkpoint_every_n_layers)

    def forward(self, images: Tensor) -> ImageFeatures:
        """(B, 3, H, W) -> pooled (B, D), patches (B, P, D)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ImageTower expects (B, 3, H, W) images, got {tuple(images.shape)}")
        out = self.backbone(pixel_values=images, output_hidden_states=True)
        tokens = out.hidden_states[-1]  # last block output, before the final LayerNorm
        local = out.last_hidden_state if self.post_norm_patches else tokens
        return ImageFeatures(pooled=tokens.mean(dim=1), patches=local[:, self.num_prefix :])
