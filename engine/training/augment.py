"""Augmentation for H&E tiles: flips, 90° rotations, scale, brightness/contrast/saturation, HED
stain jitter (Tellez et al. 2018: perturb haematoxylin / eosin / DAB optical densities), and what a
scanner adds: focus blur and JPEG compression artefacts.

:data:`SCANNER` is the training recipe of the shipped models: scale 0.5–2× (a slide whose µm/px is
half or twice the model card's is still read correctly), stronger stain jitter, blur and JPEG.

Randomness comes from a ``numpy.random.Generator`` the caller seeds per sample, so the same
(seed, epoch, index) gives the same augmented sample on any worker or process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.color.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


@dataclass(frozen=True)
class AugmentConfig:
    crop: int | None = 224  # training crop (pads with reflection when the tile is smaller)
    flips: bool = True
    rot90: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    hed_sigma: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    blur: float = 0.0  # probability of a Gaussian blur (sigma 0.3–1.5 px: slightly out of focus)
    jpeg: float = 0.0  # probability of a JPEG round trip at quality 30–90


#: What a real scanner throws at the model (the shipped teacher and student are trained with it).
SCANNER = AugmentConfig(crop=128, scale=(0.5, 2.0), hed_sigma=0.08, brightness=0.15, contrast=0.15,
                        saturation=0.2, blur=0.3, jpeg=0.3)


def scanner_artefacts(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Focus blur and JPEG compression, each with the configured probability."""
    import io

    from PIL import ImageFilter

    if not (cfg.blur or cfg.jpeg):
        return rgb
    blur, jpeg = rng.random() < cfg.blur, rng.random() < cfg.jpeg
    sigma, quality = float(rng.uniform(0.3, 1.5)), int(rng.integers(30, 91))
    if not (blur or jpeg):
        return rgb
    im = Image.fromarray(np.ascontiguousarray(rgb))
    if blur:
        im = im.filter(ImageFilter.GaussianBlur(sigma))
    if jpeg:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        buf.seek(0)
        im = Image.open(buf).convert("RGB")
    return np.asarray(im)


def _hed(rgb: np.ndarray) -> np.ndarray:
    """Each pixel's optical density split into hematoxylin, eosin and DAB (Ruifrok & Johnston), N×3."""
    od = -np.log(np.clip(rgb.astype(np.float64), 1.0, 255.0) / 255.0)
    return od.reshape(-1, 3) @ _HED_FROM_RGB


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The hematoxylin optical density of an RGB image (H×W float): nuclei are high."""
    return _hed(rgb)[:, 0].reshape(rgb.shape[:2])


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Scale and shift each stain's optical density by ``1 ± sigma`` and ``± sigma``."""
    hed = _hed(rgb)
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3)
    beta = rng.uniform(-sigma, sigma, 3)
    od2 = (hed * alpha + beta) @ _RGB_FROM_HED
    out = 255.0 * np.exp(-od2.reshape(rgb.shape))
    return np.clip(out, 0, 255).astype(np.uint8)


def colour_jitter(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    x = rgb.astype(np.float32)
    x = x * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) + grey
    return np.clip(x, 0, 255).astype(np.uint8)


def _rescale(img: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    wh = (max(1, round(w * factor)), max(1, round(h * factor)))
    img = np.asarray(Image.fromarray(img).resize(wh, Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize(wh, Image.NEAREST))
    return img, mask


def random_crop(img: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        mask = np.pad(mask, ((0, ph), (0, pw)), mode="reflect")
        h, w = mask.shape
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[y:y + size, x:x + size], mask[y:y + size, x:x + size]


def augment(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Return an augmented (image, mask) pair; geometric ops act on both, colour ops on the image."""
    if cfg.scale != (1.0, 1.0):
        lo, hi = np.log(cfg.scale[0]), np.log(cfg.scale[1])
        img, mask = _rescale(img, mask, float(np.exp(rng.uniform(lo, hi))))
    if cfg.crop:
        img, mask = random_crop(img, mask, cfg.crop, rng)
    if cfg.flips and rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if cfg.rot90:
        k = int(rng.integers(0, 4))
        img, mask = np.rot90(img, k), np.rot90(mask, k)
    if cfg.hed_sigma:
        img = hed_jitter(img, rng, cfg.hed_sigma)
    img = colour_jitter(img, rng, cfg)
    img = scanner_artefacts(img, rng, cfg)
    return np.array(img, dtype=np.uint8, order="C"), np.array(mask, dtype=np.uint8, order="C")
