"""Dock panels of the main window (slide info; later: classes, models, jobs)."""
