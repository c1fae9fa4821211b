"""Where a MaMA run's global image-report alignment stands, on its own training pairs.

For a trained run (folder or checkpoint) this reads ``--n`` training items through the run's own
dataset (training augmentation and report masking, as the run saw them; no extra view) and prints:

* the CLIP loss (both directions, the run's logit scale) of the global embeddings over batches of
  ``--batch`` in eval mode, next to its chance level (2 ln B) and the floors of ideal models
  (:func:`~medlearn.mama.eval.alignment_floor.contrastive_floor` on the whole training table);
* how well each side carries the breast density: 5-fold cross-validated balanced accuracy of a
  logistic regression (scikit-learn) on the global text and image embeddings, and the share of
  each embedding's variance between density classes;
* the mean pairwise cosine of each side's embeddings (near 1: the side maps every input to about
  the same vector, so the logits cannot spread);
* what the run's random resized crop (``data.augment.crop_scale`` / ``crop_ratio``) leaves of the
  findings: over 100 crops of every training image with ROIs, the share of crops that keep none
  of its finding and the share that keep less than half (the best-kept box of the image).

    python benchmarks/mama_global_alignment.py runs/mama-quality/runs/mama_s0
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import cross_val_predict
from sklearn.preprocessing import StandardScaler

from medlearn.mama.eval.alignment_floor import contrastive_floor
from medlearn.mama.eval.evaluate import MamaEncoder, load_pretrained
from medlearn.mama.train import build_datasets


def density_probe(x: np.ndarray, density: np.ndarray, seed: int) -> float:
    """5-fold cross-validated balanced accuracy of a class-balanced logistic regression."""
    clf = LogisticRegression(max_iter=3000, class_weight="balanced", random_state=seed)
    pred = cross_val_predict(clf, StandardScaler().fit_transform(x), density, cv=5)
    return float(balanced_accuracy_score(density, pred))


def between_share(x: np.ndarray, labels: np.ndarray) -> float:
    """Share of the total variance of ``x`` (N, E) that lies between the classes of ``labels``."""
    mu = x.mean(0)
    between = sum(((x[labels == c].mean(0) - mu) ** 2).sum() * (labels == c).sum() for c in np.unique(labels))
    return float(between / ((x - mu) ** 2).sum())


def finding_kept_by_crops(train_ds, scale, ratio, n_crops: int = 100, seed: int = 0) -> dict[str, float]:
    """Shares of random resized crops that keep none / less than half of an image's finding."""
    from medlearn.mama.data.transforms import random_resized_crop_box
    from medlearn.mama.eval.localisation import table_roi_boxes

    side = 1000  # boxes in the coordinates of the whole (prepared) image resized to side x side
    boxes = [b for b in table_roi_boxes(train_ds.table, train_ds.root, side) if len(b)]
    rng = np.random.default_rng(seed)
    kept = []
    for image_boxes in boxes:
        for _ in range(n_crops):
            y0, x0, ch, cw = random_resized_crop_box(side, side, rng, tuple(scale), tuple(ratio))
            best = 0.0
            for by0, bx0, by1, bx1 in image_boxes:  # (y0, x0, y1, x1)
                inter = max(0.0, min(by1, y0 + ch) - max(by0, y0)) * max(
                    0.0, min(bx1, x0 + cw) - max(bx0, x0)
                )
                best = max(best, inter / max(1e-9, (by1 - by0) * (bx1 - bx0)))
            kept.append(best)
    k = np.array(kept)
    return {"images_with_rois": len(boxes), "crops_keep_none": float((k == 0).mean()),
            "crops_keep_under_half": float((k < 0.5).mean())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="run folder or checkpoint of `medlearn mama train`")
    ap.add_argument("--n", type=int, default=320, help="training items read (a multiple of --batch)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = load_pretrained(args.run)
    enc = MamaEncoder(model)
    cfg.data.multiview_prob = 0.0  # the extra view is not used here
    train_ds, _ = build_datasets(cfg)
    train_ds.set_epoch(0)  # augmentation and masking: a function of (seed, epoch 0, index)
    order = np.random.default_rng(args.seed).permutation(len(train_ds))[: args.n - args.n % args.batch]
    items = [train_ds[int(i)] for i in order]
    images = torch.stack([it["image"] for it in items])
    reports = [it["report"] for it in items]
    density = np.array([int(it["labels"]["density"]) for it in items])
    img = torch.cat([enc.encode_images(images[k : k + 32]) for k in range(0, len(items), 32)])
    txt = torch.cat([enc.encode_texts(reports[k : k + 32]) for k in range(0, len(items), 32)])
    target = torch.arange(args.batch)
    losses = []
    for k in range(0, len(items), args.batch):
        logits = enc.logit_scale * img[k : k + args.batch] @ txt[k : k + args.batch].T
        losses.append(float(F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
    table = train_ds.table
    result = {
        "run": args.run,
        "items": len(items),
        "clip_loss_eval": float(np.mean(losses)),
        "logit_scale": enc.logit_scale,
        "clip_loss_chance": float(2 * np.log(args.batch)),
        "clip_loss_floor": contrastive_floor(table, args.batch, cfg.data.mask_prob),
        "clip_loss_floor_density_only": contrastive_floor(
            table, args.batch, cfg.data.mask_prob, ["tissueden"], []
        ),
        "density_probe_text": density_probe(txt.numpy(), density, args.seed),
        "density_probe_image": density_probe(img.numpy(), density, args.seed),
        "density_variance_share_text": between_share(txt.numpy(), density),
        "density_variance_share_image": between_share(img.numpy(), density),
        "mean_cosine_text": float((txt @ txt.T).mean()),
        "mean_cosine_image": float((img @ img.T).mean()),
    }
    result.update(finding_kept_by_crops(train_ds, cfg.data.augment.crop_scale, cfg.data.augment.crop_ratio))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
