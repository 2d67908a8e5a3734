"""Forward-hook recorders for distillation: :class:`~engine.models.recorders.FeatureRecorder`.

The recorder lives in :mod:`engine.models` (a model reads its own feature widths with it, and
models sit below distillation); this name stays so distillation code reads as before.
"""

from engine.models.recorders import FeatureRecorder

__all__ = ["FeatureRecorder"]
