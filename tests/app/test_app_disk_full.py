"""The GUI on a full disk and out of memory: a model run and a round that fail say so in one line
naming the file (never a traceback), and leave no half-written file behind."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
import torch
from fault_fixtures import DiskFull, leftovers

from app.engine_bridge import failure_message
from app_students import save_uniform
from engine.slide import sample
from qt_probe import wait_drawn


@pytest.mark.parametrize("exc, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.z"), "inference failed: /data/x.z: no space left on device"),
    (OSError(errno.EROFS, "Read-only file system"), "inference failed: read-only file system"),
    (MemoryError(), "inference failed: out of memory"),
    (RuntimeError("line one\n  line two"), "inference failed (RuntimeError: line one line two)"),
])
def test_an_unnamed_failure_is_one_line(exc: BaseException, words: str) -> None:
    message = failure_message(exc)
    assert message.startswith(words) and "\n" not in message


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_uniform(tmp_path_factory.mktemp("model") / "uniform.safetensors", tile=128)


def run_and_fail(qtbot, window, small_svs, model_file):
    assert window.open_path(small_svs)
    wait_drawn(qtbot, window.view)
    pa = window.predictions
    assert pa.load_model(str(model_file))
    with qtbot.waitSignal(pa.bridge.finished, timeout=60000):
        assert pa.run()
    end = pa.last_finished
    assert end is not None and end.status == "failed", end
    assert window.last_error == end.message and "\n" not in end.message and "Traceback" not in end.message
    return end.message


def test_a_full_disk_during_a_model_run(qtbot, window, small_svs, model_file, monkeypatch) -> None:
    fault = DiskFull(monkeypatch, lambda p: p.name.endswith(".tmp") and ".z." in p.name, after=2)
    message = run_and_fail(qtbot, window, small_svs, model_file)
    assert fault.hits >= 1
    folder = sample.user_data_dir() / "predictions"
    assert message.startswith(f"cannot write {folder}") and message.endswith(": no space left on device")
    assert leftovers(folder) == []


def test_a_window_that_fits_nowhere_in_memory(qtbot, window, small_svs, model_file, monkeypatch) -> None:
    from engine.inference.runner import ProbabilityHead

    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(ProbabilityHead, "forward", forward)
    message = run_and_fail(qtbot, window, small_svs, model_file)
    assert "out of memory running the model even on one" in message and Path(small_svs).name in message


def test_a_round_on_a_full_disk_ends_with_one_line(qtbot, tmp_path) -> None:
    """The round's real command line (``engine.cli``, ``--events``), its work replaced by a write
    that meets a full disk: the app's round ends "failed" with the engine's one line."""
    from app.finetune_bridge import FinetuneProcess

    code = ("import errno, sys\n"
            "import engine.finetune.round as r\n"
            "def full(*a, **k):\n"
            "    raise OSError(errno.ENOSPC, 'No space left on device', sys.argv[1])\n"
            "r._run = full\n"
            "from engine.cli import main\n"
            "sys.exit(main(['finetune', '--project', sys.argv[2], '--events']))\n")
    target = tmp_path / "project" / "models" / "v0002.safetensors"
    proc = FinetuneProcess()
    with qtbot.waitSignal(proc.ended, timeout=60000) as ended:
        assert proc.start([sys.executable, "-c", code, str(target), str(tmp_path / "project")],
                          cwd=str(Path(__file__).resolve().parents[2]))
    end = ended.args[0]
    assert end.status == "failed" and end.message == f"{target}: no space left on device", end
