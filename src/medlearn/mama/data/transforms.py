"""Image transforms for mammograms: Otsu foreground crop, resize, training augmentations (torch ops).

Inputs are (H, W) arrays, float in [0, 1] or uint8/uint16 cached images (converted to float after
cropping, which saves work; tissue bright); outputs are (3, S, S) float32 tensors,
the grey channel repeated three times and normalised with mean 0.5 / std 0.5 (range [-1, 1]).

Training (reference recipe): Otsu crop -> random resized crop (area scale 0.1-1,
aspect 3/4-4/3) to S x S -> horizontal and vertical flips (p 0.5 each) -> colour jitter (p 0.8;
brightness and contrast, the only parts that act on a grey image) -> "random grayscale" (p 0.2; a
no-op on grey images, kept as a parameter for parity) -> Gaussian blur (p 0.4, sigma 0.1-2.0 px) ->
normalise. Evaluation: Otsu crop -> resize to S x S -> normalise. Random parameters come from a
``numpy.random.Generator`` the caller passes, so a sample is reproducible from its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import label


def foreground_box(img: np.ndarray, *, max_side: int = 256, margin: int = 0) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), end-exclusive, of the largest connected region above the Otsu threshold.

    Thresholding runs on a strided, lightly smoothed (sigma 1) copy of at most ``max_side`` pixels
    per side (fast on 4k images), followed by a 3x3 binary opening that removes isolated noise
    pixels; the box is scaled back (so it is exact to one stride) and padded by ``margin`` pixels.
    A constant image gives the full image.
    """
    h, w = img.shape
    step = max(1, int(math.ceil(max(h, w) / max_side)))
    small = np.asarray(img[::step, ::step], dtype=np.float32)
    if small.size == 0 or float(small.max()) <= float(small.min()):
        return 0, 0, h, w
    small = ndimage.gaussian_filter(small, 1.0)
    mask = ndimage.binary_opening(small > threshold_otsu(small), np.ones((3, 3), bool))
    lab = label(mask, connectivity=2)
    if lab.max() == 0:
        return 0, 0, h, w
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    ys, xs = np.nonzero(lab == int(sizes.argmax()))
    y0, x0 = max(int(ys.min()) * step - margin, 0), max(int(xs.min()) * step - margin, 0)
    y1, x1 = min((int(ys.max()) + 1) * step + margin, h), min((int(xs.max()) + 1) * step + margin, w)
    return y0, x0, y1, x1


def otsu_crop(img: np.ndarray) -> np.ndarray:
    """The image cropped to :func:`foreground_box` (a view, not a copy)."""
    y0, x0, y1, x1 = foreground_box(img)
    return img[y0:y1, x0:x1]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a (H, W) or (C, H, W) tensor to ``size`` (h, w)."""
    squeeze = x.dim() == 2
    y = x[None, None] if squeeze else x[None]
    y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=True)
    return y[0, 0] if squeeze else y[0]


def random_resized_crop_box(
    h: int, w: int, rng: np.random.Generator, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(y0, x0, ch, cw): a crop of area fraction in ``scale`` and aspect (w/h) in ``ratio``.

    Ten tries, then the central crop clamped to ``ratio`` (the usual fallback).
    """
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


BLUR_CONV_MAX_PIXELS = 128 * 128
"""Images up to this size are blurred with two 1D convolutions, larger ones with shifted slices."""


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (H, W) tensor, kernel radius ceil(3 sigma), reflect padding.

    Two 1D convolutions for images up to :data:`BLUR_CONV_MAX_PIXELS` (2-4x faster there, one
    thread, on this machine); a weighted sum of shifted slices for larger ones, where it is 1.2-4x
    faster than the convolutions. Both compute the same sums (they agree to float round-off).
    """
    r = max(1, int(math.ceil(3 * sigma)))
    r = min(r, (min(x.shape) - 1))
    if r < 1:
        return x
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    h, w = x.shape
    p = F.pad(x[None, None], (r, r, r, r), mode="reflect")
    if h * w <= BLUR_CONV_MAX_PIXELS:
        k = k.to(x.dtype)
        return F.conv2d(F.conv2d(p, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))[0, 0]
    k, p = k.tolist(), p[0, 0]
    rows = sum(k[i] * p[:, i : i + w] for i in range(2 * r + 1))
    return sum(k[i] * rows[i : i + h, :] for i in range(2 * r + 1))


def to_unit_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W) array -> float32 tensor in [0, 1]: uint8 / 255, uint16 / 65535, floats unchanged."""
    x = torch.from_numpy(np.ascontiguousarray(img))
    if img.dtype == np.uint8:
        return x.float().mul_(1.0 / 255.0)
    if img.dtype == np.uint16:
        return x.to(torch.int32).float().mul_(1.0 / 65535.0)
    return x.float()


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """(H, W) in [0, 1] -> (3, H, W) normalised with mean 0.5, std 0.5."""
    return ((x.clamp(0, 1) - 0.5) / 0.5).unsqueeze(0).expand(3, -1, -1).contiguous()


@dataclass
class EvalTransform:
    """Otsu crop -> resize to (size, size) -> 3 channels, normalised. ``crop=False`` skips the crop."""

    size: int
    crop: bool = True

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.crop:
            img = otsu_crop(img)
        return to_model_input(resize(to_unit_tensor(img), (self.size, self.size)))


@dataclass
class TrainTransform:
    """The training augmentation (module docstring); probabilities and ranges are fields."""

    size: int
    crop: bool = True
    scale: tuple[float, float] = (0.1, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    gray_p: float = 0.2
    blur_p: float = 0.4
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.crop:
            img = otsu_crop(img)
        h, w = img.shape
        y0, x0, ch, cw = random_resized_crop_box(h, w, rng, self.scale, self.ratio)
        x = to_unit_tensor(img[y0 : y0 + ch, x0 : x0 + cw])
        x = resize(x, (self.size, self.size))
        if rng.random() < self.hflip_p:
            x = x.flip(-1)
        if rng.random() < self.vflip_p:
            x = x.flip(-2)
        if rng.random() < self.jitter_p:
            b = rng.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
            c = rng.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
            first_brightness = rng.random() < 0.5
            for op in ("b", "c") if first_brightness else ("c", "b"):
                if op == "b":
                    x = (x * b).clamp(0, 1)
                else:
                    x = ((x - x.mean()) * c + x.mean()).clamp(0, 1)
        _ = rng.random() < self.gray_p  # grayscale: identity on a grey image (draw kept for parity)
        if rng.random() < self.blur_p:
            x = gaussian_blur(x, float(rng.uniform(*self.blur_sigma)))
        return to_model_input(x)
