"""Keep torch gentle on the shared CPU: two threads, fixed seed per test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)


def link_cases(src: Path, dest: Path, cases: int, per_case: int, regex: str) -> None:
    """Link ``per_case`` real pairs of the first ``cases`` cases of ``src`` into ``dest``/images, masks."""
    import re

    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    masks = {p.stem: p for p in (src / "masks").iterdir()}
    by_case: dict[str, list[Path]] = {}
    for img in sorted((src / "images").iterdir()):
        m = re.match(regex, img.stem)
        if m and img.stem in masks:
            by_case.setdefault(next(g for g in m.groups() if g is not None), []).append(img)
    chosen = [c for c, imgs in by_case.items() if len(imgs) >= per_case][:cases]
    for c in chosen:
        for img in by_case[c][:per_case]:
            (dest / "images" / img.name).symlink_to(img)
            (dest / "masks" / masks[img.stem].name).symlink_to(masks[img.stem])


@pytest.fixture(scope="session")
def tiny_mixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy (links) of the training mixture: real tumour tiles of 6 adenocarcinoma cases and
    real negatives of 6 normal-mucosa cases, under the folders' real names."""
    from engine.shared_data import data_path
    from engine.training.mixture import REGEX

    root = tmp_path_factory.mktemp("mixture")
    link_cases(data_path("seg", "ebhi-adenocarcinoma"), root / "ebhi-adenocarcinoma", 6, 2, REGEX)
    link_cases(data_path("seg", "ebhi-normal"), root / "ebhi-normal", 6, 2, REGEX)
    return root
