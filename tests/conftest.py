"""Fixtures shared by every test: the real data beside the project, found through one helper."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from engine.shared_data import data_path, data_root  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$COCO_DATA``): real slides, annotations and segmentation sets."""
    return data_root()


@pytest.fixture(scope="session")
def small_svs() -> Path:
    return data_path("slides", "cmu-1-small-region.svs")


@pytest.fixture(scope="session")
def no_mpp_svs() -> Path:
    return data_path("slides", "tcga-cr-7395-01a-01-ts1.svs")


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    return data_path("slides", "dicom-cmu-1-small-region")


@pytest.fixture(autouse=True, scope="session")
def _private_user_data_for_shared_fixtures(tmp_path_factory: pytest.TempPathFactory):
    """The same for module- and session-scoped fixtures, which run before any per-test fixture (a
    module's reference run of ``cocopath-engine infer`` would otherwise write the real user cache)."""
    user = tmp_path_factory.mktemp("userdata-shared")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COCOPATH_DATA_DIR", str(user))
        mp.setenv("COCOPATH_DEFAULT_MODEL", str(user / "no-default-model.safetensors"))
        mp.setenv("COCOPATH_DEFAULT_TEACHER", str(user / "no-default-teacher.safetensors"))
        yield


@pytest.fixture(autouse=True)
def _private_user_data(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep tests away from the real user's data folder (sample cache, settings) and from the
    shipped default models (a test that wants one sets these variables itself)."""
    user = tmp_path_factory.mktemp("userdata")
    monkeypatch.setenv("COCOPATH_DATA_DIR", str(user))
    monkeypatch.setenv("COCOPATH_DEFAULT_MODEL", str(user / "no-default-model.safetensors"))
    monkeypatch.setenv("COCOPATH_DEFAULT_TEACHER", str(user / "no-default-teacher.safetensors"))
