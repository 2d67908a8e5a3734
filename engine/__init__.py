"""CoCoPath engine: slides, annotations, models, distillation, training, inference.

Headless by contract: nothing under ``engine`` imports PySide6 or ``app`` (checked by import-linter
in the test run), and ``engine.slide`` never imports torch so the viewer starts fast.
"""

__version__ = "0.1.0"
