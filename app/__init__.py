"""CoCoPath's desktop application (PySide6). Thin: widgets hold no domain logic.

Importing ``app`` (or ``app.state``) never imports Qt or torch; the GUI modules import PySide6.
"""
