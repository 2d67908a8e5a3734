""""Open sample slide": download OpenSlide's public test slide off the GUI thread, with progress.

The download runs on the app's :class:`~app.workers.Worker` (typed signals, cooperative cancel
between chunks, a clean wait on shutdown). The download itself (checksum, cache, clear errors) is
the engine's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QMessageBox, QProgressDialog, QWidget

from app.workers import Job, Worker

log = logging.getLogger(__name__)


def download(url: str | None, job: Job) -> str:
    """Runs ``engine.slide.sample.download_sample`` for ``job`` (its progress, its cancel); the
    verified slide's path."""
    from engine.api import sample

    kwargs = {"url": url} if url else {}
    return str(sample.download_sample(progress=job.progress, cancelled=job.is_cancelled, **kwargs))


def _download_failure(exc: BaseException) -> str:
    from engine.api import CocoPathError

    if isinstance(exc, CocoPathError):
        return str(exc)
    return f"The sample slide could not be downloaded ({type(exc).__name__}: {exc})."


class SampleDownloader(QObject):
    """Shows a progress dialog (with Cancel) for a worker and reports the outcome.

    ``finished_path`` carries the slide's path on success; on failure a message box says why.
    """

    finished_path = Signal(str)
    failed = Signal(str)

    def __init__(self, parent: QWidget, url: str | None = None, show_errors: bool = True) -> None:
        super().__init__(parent)
        self._parent = parent
        self.show_errors = show_errors
        self.error_box: QMessageBox | None = None
        self.dialog = QProgressDialog("Downloading the sample slide (CMU-1-Small-Region, 1.9 MB)…",
                                      "Cancel", 0, 100, parent)
        self.dialog.setWindowTitle("Sample slide")
        self.dialog.setMinimumDuration(0)
        self.dialog.setAutoClose(False)
        self.dialog.setAutoReset(False)
        self.url = url
        self.worker = Worker("sample-download", self, describe=_download_failure)
        self.worker.progress.connect(self._on_progress)
        self.worker.finished.connect(self._on_success)
        self.worker.failed.connect(self._on_failure)
        self.worker.cancelled.connect(self._on_cancelled)
        self.dialog.canceled.connect(self.worker.cancel)

    def start(self) -> None:
        self.dialog.setValue(0)
        self.dialog.show()
        self.worker.start(lambda job: download(self.url, job))

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.dialog.setMaximum(1000)
            self.dialog.setValue(min(1000, int(done * 1000 / total)))

    def _finish(self) -> None:
        self.worker.wait(5)
        self.dialog.close()

    def _on_success(self, path: str) -> None:
        self._finish()
        self.finished_path.emit(path)

    def _on_failure(self, message: str) -> None:
        self._finish()
        log.warning("%s", message)
        if self.show_errors:
            self.error_box = QMessageBox(QMessageBox.Icon.Warning, "Sample slide", message,
                                         QMessageBox.StandardButton.Ok, self._parent)
            self.error_box.open()
        self.failed.emit(message)

    def _on_cancelled(self) -> None:
        self._finish()

    def shutdown(self) -> None:
        self.worker.shutdown(5)


def sample_path_or_none() -> Path | None:
    """A sample slide already on this machine ($COCOPATH_SAMPLE or the verified cached download)."""
    from engine.api import sample

    return sample.local_sample()
