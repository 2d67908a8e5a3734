"""Building blocks for inference tests: small pyramidal TIFF slides with known pixels, and toy networks
whose output is a known function of their input (so the expected prediction map is exact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tiff_fixtures import halve_rgb, write_slide  # noqa: F401  (the inference tests import them from here)
from torch import nn

from engine.inference.spec import ModelSpec

GLASS = 245


def pattern_rgb(w: int, h: int, glass_right: float = 0.35, border: int = 40) -> np.ndarray:
    """Red = a function of absolute (x, y); green/blue dark (tissue-like); glass around it and on
    the right part."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[..., 0] = (x * 7 + y * 3) % 251
    rgb[..., 1] = 60
    rgb[..., 2] = 120
    rgb[:, int(w * (1 - glass_right)):] = GLASS
    rgb[:border] = rgb[-border:] = GLASS
    rgb[:, :border] = rgb[:, -border:] = GLASS
    return rgb


class RedIsTumour(nn.Module):
    """Tumour probability = the red channel (inputs un-normalised with mean 0, std 1: x = rgb/255)."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.classes = classes
        self.calls = 0
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.windows += x.shape[0]
        p = x[:, :1].clamp(0, 1)
        probs = torch.cat([1 - p, p], dim=1)
        return torch.log(probs.clamp_min(1e-12))


class Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.full_like(x[:, :1], self.value)
        return torch.log(torch.cat([1 - p, p], dim=1))


def plain_spec(tile: int = 128, mpp: float | None = 0.5, version: str = "v1") -> ModelSpec:
    """A card with identity normalisation, so x = rgb / 255 inside the network."""
    return ModelSpec("toy", version, ("background", "tumour"), mpp, (0.0, 0.0, 0.0),
                     (1.0, 1.0, 1.0), tile)


class CountingSlide:
    """A slide source that records every region read (to prove background is never read)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.info = inner.info
        self.requests: list = []

    def read_rgb(self, request):
        self.requests.append(request)
        return self.inner.read_rgb(request)

    def read_argb(self, request):
        return self.inner.read_argb(request)

    def associated_image(self, name: str):
        return self.inner.associated_image(name)

    def close(self) -> None:
        self.inner.close()


def prepare(slide_path: Path, spec: ModelSpec, cache_dir: Path, margin: int = 16, level=None):
    """(slide, grid, cache) for ``spec`` on a slide, tissue detected as in the CLI."""
    from engine.inference.cache import PredictionCache
    from engine.inference.geometry import make_grid
    from engine.inference.pipeline import tissue_tiles
    from engine.slide import open_slide
    from engine.slide.tissue import detect_tissue

    slide = open_slide(slide_path)
    grid = make_grid(slide.info, spec.mpp, level=level, tile=spec.tile, margin=margin)
    cache = PredictionCache.open(cache_dir, grid, spec.version, len(spec.foreground),
                                 tissue_tiles(grid, detect_tissue(slide)))
    return slide, grid, cache


def reference_levels(level0: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """The pyramid the cache must hold: zero-padded to even, 2×2 mean rounded half up, cropped."""
    out = [level0]
    for w, h in sizes[1:]:
        prev = out[-1]
        pad = np.zeros((2 * h, 2 * w), np.uint16)
        pad[:prev.shape[0], :prev.shape[1]] = prev
        s = pad.reshape(h, 2, w, 2).sum(axis=(1, 3))
        out.append(((s + 2) >> 2).astype(np.uint8))
    return out
