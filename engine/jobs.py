"""Values that cross threads and processes for long engine work: Progress / Result events and a
cooperative cancel token. All frozen; ``metrics`` are read-only mappings."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


def _freeze(obj: object, name: str) -> None:
    object.__setattr__(obj, name, MappingProxyType(dict(getattr(obj, name))))


@dataclass(frozen=True)
class Progress:
    """One progress event: ``step`` of ``total`` in ``stage`` (e.g. "train", "paraphraser", "eval")."""

    stage: str
    step: int
    total: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    message: str = ""

    def __post_init__(self) -> None:
        _freeze(self, "metrics")

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


@dataclass(frozen=True)
class Result:
    """How a job ended: ``status`` is "done", "cancelled" or "failed"; ``outputs`` names files written."""

    status: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in ("done", "cancelled", "failed"):
            raise ValueError(f"unknown status {self.status!r}")
        _freeze(self, "metrics")


class CancelToken:
    """Thread-safe cooperative cancellation: the worker polls :attr:`cancelled` between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
