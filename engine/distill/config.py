"""Distillation method configs (TOML in ``resources/configs/distill/<method>.toml``).

A config lists connectors and losses; each loss maps its function's argument names to *sources*:

- ``student.<feature>`` / ``teacher.<feature>``: a named feature layer of the network
  (``enc_shallow``, ``dec_shallow``, ``enc_deep``, ``logits`` — see ``model.feature_layers``);
- ``connector.<name>``: the output of a connector declared in the config;
- ``target``: the label map; ``critic``: the adversarial discriminator module.

Example::

    method = "coco"
    [[losses]]
    loss = "coco"
    weight = 1.0
    inputs = { student_a = "student.enc_shallow", student_b = "student.dec_shallow",
               teacher_a = "teacher.enc_shallow", teacher_b = "teacher.dec_shallow" }
    params = { grid = 16 }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import CocoPathError
from engine.resources import resource_path

CONFIG_DIR = resource_path("configs", "distill")


class DistillConfigError(CocoPathError):
    """A distillation config is malformed or wires a loss to something that does not exist."""


@dataclass(frozen=True)
class LossSpec:
    loss: str
    weight: float
    inputs: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectorSpec:
    """``kind`` in adapter / paraphraser / translator; ``input`` a source; ``params`` may say
    ``out_like = "teacher.enc_shallow"`` (adapter) or ``factor_like = "student.enc_shallow"``."""

    name: str
    kind: str
    input: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DistillConfig:
    method: str
    description: str
    losses: tuple[LossSpec, ...]
    connectors: tuple[ConnectorSpec, ...] = ()
    critic: dict[str, Any] = field(default_factory=dict)  # lr, betas, gp_weight, widths
    paraphraser_steps: int = 0
    paraphraser_lr: float = 1e-3


def method_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(method_or_path: str | Path) -> DistillConfig:
    """Load a config by method name (a file in :data:`CONFIG_DIR`) or by path."""
    path = Path(method_or_path)
    if path.suffix != ".toml":
        path = CONFIG_DIR / f"{method_or_path}.toml"
        if not path.is_file():
            raise DistillConfigError(
                f"unknown distillation method {method_or_path!r}; valid: {', '.join(method_names())}"
            )
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DistillConfigError(f"{path}: cannot read config ({exc})") from exc
    return parse_config(raw, str(path))


def parse_config(raw: dict[str, Any], where: str = "config") -> DistillConfig:
    try:
        losses = tuple(
            LossSpec(d["loss"], float(d.get("weight", 1.0)), dict(d["inputs"]), dict(d.get("params", {})))
            for d in raw["losses"]
        )
        conns = tuple(
            ConnectorSpec(d["name"], d["kind"], d["input"], dict(d.get("params", {})))
            for d in raw.get("connectors", [])
        )
        para = raw.get("paraphraser", {})
        return DistillConfig(
            method=str(raw["method"]), description=str(raw.get("description", "")),
            losses=losses, connectors=conns, critic=dict(raw.get("critic", {})),
            paraphraser_steps=int(para.get("steps", 0)), paraphraser_lr=float(para.get("lr", 1e-3)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DistillConfigError(f"{where}: malformed distillation config ({exc!r})") from exc
