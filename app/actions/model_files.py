"""Model files in and out of the project's registry: Import… adds a .safetensors model as a new
version (never activated, pickles refused), Export… writes a version's weights to a file.

A chosen file's model card is checked before anything else (the engine's ``load_spec``: types,
ranges, names; a card that names paths is refused), and every refusal is one line in an error
box, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QFileDialog

from engine.api import CocoPathError, load_spec

if TYPE_CHECKING:
    from app.actions.registry import RegistryActions

MODEL_FILTER = "CoCoPath models (*.safetensors)"


def import_dialog(ra: RegistryActions) -> None:
    path, _ = QFileDialog.getOpenFileName(ra.window, "Import a model", "", MODEL_FILTER)
    if path:
        import_model(ra, path)


def import_model(ra: RegistryActions, path: str | Path) -> str | None:
    """Add a .safetensors model to the project's versions (not activated); its version."""
    ra.start()
    ra.sync_project()
    if ra.registry is None:
        ra.window.show_error("Open a slide first: model versions belong to a project.")
        return None
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        ra.window.show_error(f"{p.name}: not a model file. Only .safetensors models can be "
                             f"imported (pickled .pt/.pth files are refused for safety).")
        return None
    try:
        load_spec(p)  # the card checked before torch loads the weights
        v = ra.registry.import_model(p, note=f"imported from {p.name}")
    except CocoPathError as exc:
        ra.window.show_error(str(exc))
        return None
    except OSError as exc:
        ra.window.show_error(f"{p}: could not be imported ({exc.strerror or exc}).")
        return None
    ra.refresh_models()
    ra.panel.select_version(v.version)
    ra.window.statusBar().showMessage(f"Imported {p.name} as {v.version}", 6000)
    return str(v.version)


def export_dialog(ra: RegistryActions, version: str) -> None:
    path, _ = QFileDialog.getSaveFileName(ra.window, "Export a model version",
                                          f"{version}.safetensors", MODEL_FILTER)
    if path:
        export_model(ra, version, path if path.endswith(".safetensors") else path + ".safetensors")


def export_model(ra: RegistryActions, version: str, dest: str | Path) -> bool:
    if ra.registry is None:
        return False
    try:
        ra.registry.export_model(version, Path(dest))
    except CocoPathError as exc:
        ra.window.show_error(str(exc))
        return False
    except OSError as exc:
        ra.window.show_error(f"{dest}: could not be written ({exc.strerror or exc}).")
        return False
    ra.window.statusBar().showMessage(f"Exported {version} to {dest}", 6000)
    return True
