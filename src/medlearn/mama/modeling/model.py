"""The MaMA model: image tower + text tower + heads, returning every feature the losses need.

Losses are not computed here (see :mod:`medlearn.mama.modeling.losses`); the model only maps a batch to
normalised embeddings, so the same forward serves training, retrieval and export.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medlearn.engine.parameters import count_parameters
from medlearn.mama.config import LossConfig, ModelConfig
from medlearn.mama.modeling.heads import MamaHeads
from medlearn.mama.modeling.image_tower import ImageTower
from medlearn.mama.modeling.text_tower import TextTower


class MamaModel(nn.Module):
    """Two towers and the MaMA heads.

    Args:
        cfg: towers and head sizes.
        loss_cfg: initial temperature and logit-scale clamp.
    """

    def __init__(self, cfg: ModelConfig, loss_cfg: LossConfig | None = None) -> None:
        super().__init__()
        loss_cfg = loss_cfg or LossConfig()
        self.image = ImageTower(cfg.image)
        self.text = TextTower(cfg.text)
        self.heads = MamaHeads(self.image.width, self.text.width, cfg.heads, loss_cfg.init_temperature)
        self.max_log_scale = math.log(loss_cfg.max_logit_scale) if loss_cfg.max_logit_scale > 0 else math.inf

    @property
    def tokenizer(self):  # noqa: ANN201 - the text tower's ReportTokenizer
        return self.text.tokenizer

    def set_late_phase(self, late: bool) -> None:
        """Freeze (before ``late_loss``) or unfreeze the local heads and local temperature."""
        self.heads.set_late_phase(late)

    def _scale(self, p: Tensor) -> Tensor:
        return p.clamp(max=self.max_log_scale).exp()

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, E) L2-normalised global image embeddings."""
        return F.normalize(self.heads.img_proj(self.image(images).pooled), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) ids and mask -> (B, E) L2-normalised global report embeddings."""
        return F.normalize(self.heads.txt_proj(self.text(input_ids, attention_mask).pooled), dim=-1)

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        extra_images: Tensor | None = None,
        late: bool = False,
    ) -> dict[str, Tensor]:
        """Embeddings for the losses.

        Args:
            images: (B, 3, H, W) anchor images v.
            input_ids, attention_mask: (B, L) tokenised reports t.
            extra_images: (B, 3, H, W) second images v' (needed when ``late``).
            late: also compute the multi-view and local features.
        Returns:
            ``img``, ``txt`` (B, E) normalised; ``scale`` (exp of the clamped logit scale); when
            ``late``: ``img_extra`` (B, E), ``ii1``, ``ii2`` (B, E2) image-image projections,
            ``patches`` (B, P, El) and ``sentences`` (B, S, El) normalised local features,
            ``sentence_mask`` (B, S) and ``local_scale``.
        """
        b = images.shape[0]
        both = late and extra_images is not None
        feats = self.image(torch.cat([images, extra_images]) if both else images)
        txt = self.text(input_ids, attention_mask)
        out = {
            "img": F.normalize(self.heads.img_proj(feats.pooled[:b]), dim=-1),
            "txt": F.normalize(self.heads.txt_proj(txt.pooled), dim=-1),
            "scale": self._scale(self.heads.logit_scale),
        }
        if not late:
            return out
        if both:
            out["img_extra"] = F.normalize(self.heads.img_proj(feats.pooled[b:]), dim=-1)
            out["ii1"], out["ii2"] = self.heads.image_image(feats.pooled[:b], feats.pooled[b:])
        out["patches"] = F.normalize(self.heads.img_local(feats.patches[:b]), dim=-1)
        sents = self.heads.sentence_local(txt.sentences, txt.sentence_mask)
        out["sentences"] = F.normalize(sents, dim=-1) * txt.sentence_mask.unsqueeze(-1)
        out["sentence_mask"] = txt.sentence_mask
        out["local_scale"] = self._scale(self.heads.local_logit_scale)
        return out


def count_trainable(model: MamaModel) -> dict[str, int]:
    """Trainable parameter counts per group: ``lora``, ``image``, ``heads``, ``other`` (must be 0).

    ``other`` is every trainable parameter outside the three groups (e.g. an unfrozen text base).
    """
    counts = {
        "lora": count_parameters(model.text, trainable_only=True, where=lambda n: "lora_" in n),
        "image": count_parameters(model.image, trainable_only=True),
        "heads": count_parameters(model.heads, trainable_only=True),
    }
    counts["other"] = count_parameters(model, trainable_only=True) - sum(counts.values())
    return counts
