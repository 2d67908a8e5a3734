"""The annotation file dialogs offer the engine's formats (engine.annotations.registry)."""

from __future__ import annotations

from app.actions.annotations import EXPORT_FILTERS, IMPORT_FILTER


def test_the_gui_filters_come_from_the_table() -> None:
    entries = IMPORT_FILTER.split(";;")
    assert entries[0] == "Annotations (*.geojson *.json *.xml)" and entries[-1] == "All files (*)"
    assert "QuPath GeoJSON (*.geojson *.json)" in entries
    assert "ASAP XML or ImageScope XML (*.xml)" in entries
    assert EXPORT_FILTERS == {"QuPath GeoJSON (*.geojson)": ("geojson", ".geojson"),
                              "ASAP XML (*.xml)": ("asap", ".xml")}
