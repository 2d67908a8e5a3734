"""Building blocks for fine-tuning tests: a small pyramidal slide whose tumour is a known colour and
shape, a project with tumour outlines and correction ROIs on it, and tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from shapely.geometry import Point, box
from tiff_fixtures import halve_rgb, write_slide  # noqa: F401  (conftest imports write_slide from here)

from engine.annotations import Annotation, AnnotationClass, Kind, Project
from engine.models import create_model
from engine.training.checkpoints import save_model

SLIDE_W, SLIDE_H = 1024, 640
MPP = 0.5
STROMA = (225, 160, 200)
TUMOUR = (110, 40, 150)
GLASS = (244, 244, 244)
CLASSES = ["background", "tumour"]
TINY = {"decoder_channels": (16, 16, 16, 8, 8)}


def tumour_shapes() -> list:
    """Level-0 discs and squares of tumour spread over the tissue."""
    shapes = []
    for i, cx in enumerate(range(90, SLIDE_W - 60, 150)):
        for j, cy in enumerate(range(90, SLIDE_H - 60, 150)):
            r = 28 + 9 * ((i + 2 * j) % 3)
            shapes.append(Point(cx, cy).buffer(r, 16) if (i + j) % 2 else box(cx - r, cy - r, cx + r, cy + r))
    return shapes


def slide_rgb(seed: int = 0) -> np.ndarray:
    """Tissue (stroma colour with noise) on glass margins; tumour shapes painted in their colour."""
    from engine.annotations.mask import fill

    rng = np.random.default_rng(seed)
    rgb = np.empty((SLIDE_H, SLIDE_W, 3), np.uint8)
    rgb[:] = STROMA
    for shape in tumour_shapes():
        rgb[fill(shape, 0, 0, SLIDE_W, SLIDE_H)] = TUMOUR
    noise = rng.integers(-12, 13, rgb.shape)
    rgb = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    rgb[:24] = rgb[-24:] = GLASS
    rgb[:, :24] = rgb[:, -24:] = GLASS
    return rgb


#: Correction ROIs (level-0 rectangles): four apart from each other, over tissue.
ROI_BOXES = ((40, 40, 330, 300), (360, 330, 640, 600), (680, 40, 980, 290), (40, 340, 300, 600))


def make_project(folder: Path, slide: Path, rois=ROI_BOXES, outlines: str = "all") -> Project:
    """A project with the slide, class "Tumour", the tumour outlines ("all", or "none") and ROIs."""
    project = Project.create(folder)
    rec = project.add_slide(slide)
    project.set_class(AnnotationClass("Tumour", (200, 0, 0), "1"))
    store = project.store(rec)
    anns = [Annotation(s, "Tumour") for s in tumour_shapes()] if outlines == "all" else []
    anns += [Annotation(box(*b), kind=Kind.ROI) for b in rois]
    store.add(anns)
    return project


def tiny_model(seed: int = 0, broken: bool = False) -> torch.nn.Module:
    """A very small student whose BatchNorm statistics are those of the slide's tissue (as a
    trained network's would be); ``broken``: its head then says "background" everywhere."""
    torch.manual_seed(seed)
    model = create_model("mobile-unet-small", classes=2, **TINY)
    calibrate_bn(model)
    if broken:
        with torch.no_grad():
            model.head.weight.mul_(0.1)
            model.head.bias.copy_(torch.tensor([2.0, -2.0]))
    return model


def calibrate_bn(model: torch.nn.Module, batches: int = 4) -> None:
    """Running BatchNorm statistics from 64² crops of the slide at 1 µm/px (no weight changes)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration batches
    img = halve_rgb(slide_rgb())
    rng = np.random.default_rng(0)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            crops = []
            for _ in range(8):
                y, x = rng.integers(12, img.shape[0] - 76), rng.integers(12, img.shape[1] - 76)
                crop = torch.from_numpy(img[y:y + 64, x:x + 64].copy()).permute(2, 0, 1).float() / 255
                crops.append((crop - mean) / std)
            model(torch.stack(crops))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def card(model: torch.nn.Module, mpp: float | None = 1.0) -> dict:
    return {"model": model.config, "classes": CLASSES, "role": "student",
            "input": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "mpp": mpp}}


def save_tiny(path: Path, seed: int = 0, broken: bool = False, mpp: float | None = 1.0) -> Path:
    model = tiny_model(seed, broken)
    return save_model(path, model, card(model, mpp))
