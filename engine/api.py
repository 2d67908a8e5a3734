"""The engine's facade for the app: the only engine module the GUI imports (import-linter checks).

It re-exports value types and entry points; heavy parts (torch) stay behind lazy imports so that
importing this module costs the viewer nothing at start-up.
"""

from __future__ import annotations

from engine.errors import CocoPathError, SlideError
from engine.slide import sample
from engine.slide.cache import ByteBoundedCache, default_cache_bytes
from engine.slide.pyramid import build_pyramid_tiff
from engine.slide.request import RegionRequest, TileGrid, TileId, best_level_for_downsample
from engine.slide.resolution import resolution_problem
from engine.slide.sample import SampleDownloadError, download_sample, local_sample
from engine.slide.source import OpenSlideSource, SlideInfo, SlideSource, open_slide
from engine.slide.tissue import TissueMask, detect_tissue

#: Annotation names (projects, store, formats), resolved on first use by the module ``__getattr__``
#: below, so importing the facade alone does not load shapely and the store.
_ANNOTATIONS = (
    "Annotation", "AnnotationClass", "AnnotationError", "AnnotationFormat", "AnnotationFormatError",
    "AnnotationStore", "Change", "ImportResult", "Kind", "Project", "ProjectError",
    "ProjectLockedError", "ProjectMissingError", "SlideRecord", "Source", "Step",
    "annotation_formats", "export_file", "guess_format", "import_file", "polygonal",
)


#: Inference names and the module each comes from, imported on first use: the prediction cache,
#: model cards and measurements need no torch; ``load_model`` and ``make_runner`` do (they load only
#: when a model is run, never at the viewer's start-up).
_INFERENCE = {
    "CacheError": "engine.inference.cache", "PredictionCache": "engine.inference.cache",
    "slide_key": "engine.inference.cache", "ModelError": "engine.inference.spec",
    "ModelSpec": "engine.inference.spec", "load_spec": "engine.inference.spec",
    "PredictionGrid": "engine.inference.geometry", "make_grid": "engine.inference.geometry",
    "needs_level": "engine.inference.geometry", "default_level": "engine.inference.geometry",
    "Measurements": "engine.inference.vectorize", "labels_from_probs": "engine.inference.vectorize",
    "measure": "engine.inference.vectorize", "SlideInference": "engine.inference.pipeline",
    "PredictedComponent": "engine.inference.regions", "RegionPrediction": "engine.inference.regions",
    "pending_tiles": "engine.inference.regions", "prediction_component_at": "engine.inference.regions",
    "prediction_in_region": "engine.inference.regions", "vector_tolerances": "engine.inference.regions",
    "PALETTE": "engine.inference.spec",
    "tissue_tiles": "engine.inference.pipeline", "make_runner": "engine.inference.runner",
    "load_model": "engine.training.checkpoints", "save_model": "engine.training.checkpoints",
    "create_model": "engine.models", "CancelToken": "engine.jobs",
    "Progress": "engine.jobs", "Result": "engine.jobs",
    "open_cache": "engine.inference.job", "pick_runner": "engine.inference.job", "one_line": "engine.oserrors",
    "WriteError": "engine.oserrors",
    "run_window": "engine.inference.geometry", "run_batch": "engine.inference.geometry",
    "measure_backend_later": "engine.inference.job",
    "remembered_backend": "engine.inference.runner", "backend_cache_dir": "engine.inference.runner",
    "note_file": "engine.inference.runner", "remembered_session": "engine.inference.onnx_session",
    "no_gpu_visible": "engine.inference.onnx_session",
    "Preview": "engine.inference.preview", "predict_preview": "engine.inference.preview",
}


#: Fine-tuning names (issue 6): the project's model registry, a round's settings and result, the
#: command line of the round's subprocess and its events, and "Review next" ranking; imported on
#: first use (a round needs torch only in its own process).
_FINETUNE = {
    "ModelRegistry": "engine.finetune.registry", "ModelVersion": "engine.finetune.registry",
    "default_model_path": "engine.finetune.registry", "RoundSettings": "engine.finetune.round",
    "RoundResult": "engine.finetune.round", "FinetuneEvent": "engine.finetune.job",
    "finetune_argv": "engine.finetune.job", "parse_event": "engine.finetune.job",
    "ReviewRegion": "engine.finetune.review", "rank_regions": "engine.finetune.review",
    "class_lut": "engine.finetune.data", "missing_classes": "engine.finetune.data",
}


def __getattr__(name: str) -> object:
    if name in _ANNOTATIONS:
        import engine.annotations as annotations

        value = getattr(annotations, name)
        globals()[name] = value
        return value
    if name in _INFERENCE or name in _FINETUNE:
        import importlib

        value = getattr(importlib.import_module(_INFERENCE.get(name) or _FINETUNE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_ANNOTATIONS,
    *_INFERENCE,
    *_FINETUNE,
    "ByteBoundedCache",
    "CocoPathError",
    "OpenSlideSource",
    "RegionRequest",
    "SampleDownloadError",
    "SlideError",
    "SlideInfo",
    "SlideSource",
    "TileGrid",
    "TileId",
    "TissueMask",
    "best_level_for_downsample",
    "build_pyramid_tiff",
    "default_cache_bytes",
    "detect_tissue",
    "download_sample",
    "local_sample",
    "open_slide",
    "resolution_problem",
    "sample",
]
