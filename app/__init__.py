"""CoCoPath's desktop application (PySide6). Thin: widgets hold no domain logic.

Importing ``app`` (or ``app.state``) never imports Qt or torch; the GUI modules import PySide6.
"""

from app.pyside_refcount import protect_singletons

protect_singletons()  # PySide6 6.12 on Python 3.11 would otherwise abort after a few seconds of painting
