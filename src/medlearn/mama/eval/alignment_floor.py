"""How low the global CLIP loss can go on a table of image-report pairs: the floor of an ideal model.

Structured reports repeat: many images of a batch share density and assessment, and the fields
that would tell them apart are often masked ("unknown") or invisible in the image (age, race,
procedure).  No model can then tell the true report from the others that say the same about what
the image shows, so the contrastive loss has a floor well above 0.  Knowing it says how far a
training run is from what the data allows.

:func:`contrastive_floor` estimates it by sampling batches as training does: an ideal model that
reads ``fields`` from the image exactly (and nothing else) spreads its probability evenly over the
reports of the batch that agree with the image on those fields; a report agrees on a maskable
field (side, view) also when the report masks it, which happens with ``mask_prob`` per field and
report.  The floor is the batch mean of that model's cross-entropy in both directions (image ->
reports plus report -> images), as :func:`~medlearn.mama.modeling.losses.clip_loss` adds them;
uniform chance is ``2 ln B``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from medlearn.errors import DataError

#: what the image itself shows: density, assessment and finding codes (always in the report)
VISIBLE_FIELDS = ("tissueden", "asses", "massshape", "massdens", "calcfind", "calcdistri")
#: visible in the image, but masked in a training report with probability ``mask_prob`` each
MASKED_FIELDS = ("laterality", "view")


def _codes(table: pd.DataFrame, fields: Sequence[str]) -> np.ndarray:
    """(N,) integer code of each row's combination of ``fields`` (missing values form their own code)."""
    missing = [f for f in fields if f not in table.columns]
    if missing:
        raise DataError(f"contrastive_floor: table has no column(s) {missing}")
    if not fields:
        return np.zeros(len(table), dtype=np.int64)
    keys = table[list(fields)].astype(object).where(table[list(fields)].notna(), "<missing>").astype(str)
    return keys.agg("|".join, axis=1).factorize()[0]


def contrastive_floor(
    table: pd.DataFrame,
    batch_size: int = 16,
    mask_prob: float = 0.8,
    fields: Sequence[str] = VISIBLE_FIELDS,
    masked_fields: Sequence[str] = MASKED_FIELDS,
    n_batches: int = 1000,
    seed: int = 0,
) -> float:
    """Mean CLIP loss (both directions) of a model that reads exactly ``fields`` + ``masked_fields``.

    Args:
        table: one row per training image (the prepared table's training rows).
        batch_size: B; batches are drawn without replacement, as the training sampler does.
        mask_prob: probability that a report masks each of ``masked_fields`` (``data.mask_prob``).
        fields: fields the image shows and every report states.
        masked_fields: fields the image shows and a report states unless masked.
        n_batches: batches sampled.
        seed: sampling seed.
    Returns:
        The floor in nats; ``2 ln B`` when the model reads nothing, 0 when every pair is unique.
    Raises:
        DataError: a field missing from ``table`` or fewer rows than ``batch_size``.
    """
    if len(table) < batch_size:
        raise DataError(f"contrastive_floor: {len(table)} rows, fewer than one batch of {batch_size}")
    always = _codes(table, fields)
    maskable = [_codes(table, [f]) for f in masked_fields]
    rng = np.random.default_rng(seed)
    losses = np.empty(n_batches)
    for k in range(n_batches):
        idx = rng.choice(len(table), batch_size, replace=False)
        agree = always[idx][:, None] == always[idx][None, :]  # (image, report)
        for codes in maskable:
            shown = rng.random(batch_size) >= mask_prob  # per report
            agree &= (codes[idx][:, None] == codes[idx][None, :]) | ~shown[None, :]
        losses[k] = np.log(agree.sum(axis=1)).mean() + np.log(agree.sum(axis=0)).mean()
    return float(losses.mean())
