"""Export a MaMA checkpoint as standard Hugging Face model folders.

``out/`` receives::

    image_tower/          DINOv2-with-registers model dir (AutoModel.from_pretrained); the MaMA global
                          feature is hidden_states[-1].mean(dim=1) (all tokens, before the final norm)
    text_tower/           the language model (AutoModel.from_pretrained) and its tokenizer (with the
                          separator token); LoRA merged into the weights (``merge=True``) or not
    text_adapter/         the peft LoRA adapter for text_tower (only with ``merge=False``)
    heads.safetensors     projections, SLA heads, image-image head, temperatures
    mama_export.json      how to compute the features (pooling, separator, image size, dims)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from medlearn.config import load_config, to_dict
from medlearn.engine import load_weights
from medlearn.errors import DataError
from medlearn.mama.config import MamaConfig
from medlearn.mama.modeling.model import MamaModel
from medlearn.mama.train import ADAPTER_DIR

log = logging.getLogger(__name__)


def run_config_of(checkpoint: Path) -> Path:
    """``<run>/config.yaml`` of a checkpoint folder ``<run>/checkpoints/<name>``."""
    cand = checkpoint.parent.parent / "config.yaml"
    if not cand.is_file():
        raise DataError(f"checkpoint '{checkpoint}': no run config at '{cand}' (pass --config)")
    return cand


def load_checkpoint(checkpoint: str | Path, config: str | Path | None = None) -> tuple[MamaModel, MamaConfig]:
    """Rebuild the model of a training run and load a checkpoint's weights into it (eval mode).

    Raises:
        DataError: when the checkpoint folder, its weights or the run config are missing.
    """
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise DataError(f"checkpoint '{ckpt}' is not a folder")
    cfg = load_config(MamaConfig, Path(config) if config else run_config_of(ckpt))
    model = MamaModel(cfg.model, cfg.loss)
    load_weights(model.image, ckpt, "image")
    load_weights(model.heads, ckpt, "heads")
    if cfg.model.text.lora_r > 0:
        adapter = ckpt / ADAPTER_DIR / "adapter_model.safetensors"
        if not adapter.is_file():
            raise DataError(f"checkpoint '{ckpt}' has no LoRA adapter ({adapter})")
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model.text.lm, load_file(str(adapter)))
    model.eval()
    return model, cfg


def export(
    checkpoint: str | Path, out: str | Path, merge: bool = True, config: str | Path | None = None
) -> Path:
    """Write the Hugging Face folders described in the module docstring; returns ``out``."""
    model, cfg = load_checkpoint(checkpoint, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.image.backbone.save_pretrained(str(out / "image_tower"))
    text = model.text
    lm: Any = text.lm
    if cfg.model.text.lora_r > 0:
        if merge:
            lm = lm.merge_and_unload()
        else:
            lm.save_pretrained(str(out / "text_adapter"))
            lm = lm.unload()
    lm.save_pretrained(str(out / "text_tower"))
    text.tokenizer.tok.save_pretrained(str(out / "text_tower"))
    save_file(
        {k: v.detach().contiguous() for k, v in model.heads.state_dict().items()},
        str(out / "heads.safetensors"),
    )
    meta = {
        "image_feature": "mean over all tokens of hidden_states[-1] (before the final LayerNorm)",
        "image_size": cfg.model.image.image_size,
        "image_normalize": {"mean": 0.5, "std": 0.5},
        "text_kind": text.kind,
        "patch_feature": (
            "patch tokens of last_hidden_state (after the final LayerNorm)"
            if cfg.model.image.patch_tokens == "post_norm"
            else "patch tokens of hidden_states[-1] (before the final LayerNorm)"
        ),
        "text_separator": text.tokenizer.separator,
        "text_bos": text.tokenizer.bos,
        "text_eos": text.tokenizer.eos,
        "text_pooling": cfg.model.text.pooling,
        "text_max_length": cfg.model.text.max_length,
        "lora_merged": bool(merge and cfg.model.text.lora_r > 0),
        "heads": to_dict(cfg.model.heads),
        "checkpoint": str(Path(checkpoint).resolve()),
    }
    (out / "mama_export.json").write_text(json.dumps(meta, indent=2))
    log.info("exported %s -> %s", checkpoint, out)
    return out
