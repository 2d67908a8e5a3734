""""Open sample slide": download OpenSlide's public test slide in a worker thread, with progress.

The worker follows labelme's download widget: a QThread with typed signals, cooperative cancel, and
a clean wait on shutdown. The download itself (checksum, cache, clear errors) is the engine's.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PySide6.QtCore import QObject, QThread, Signal
from PySide6.QtWidgets import QMessageBox, QProgressDialog, QWidget

from engine.api import CocoPathError

log = logging.getLogger(__name__)


class SampleDownloadWorker(QThread):
    """Runs ``engine.slide.sample.download_sample``; ``cancel()`` stops it between chunks."""

    progress = Signal(int, int)  # bytes done, bytes total
    succeeded = Signal(str)  # path of the verified slide
    failed = Signal(str)  # one-sentence message
    cancelled_ = Signal()

    def __init__(self, url: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.url = url
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> None:
        from engine.api import sample

        kwargs = {"url": self.url} if self.url else {}
        try:
            path = sample.download_sample(progress=self.progress.emit, cancelled=self._cancel.is_set,
                                          **kwargs)
        except CocoPathError as exc:
            if self._cancel.is_set():
                self.cancelled_.emit()
            else:
                self.failed.emit(str(exc))
            return
        except Exception as exc:  # never let a worker die silently
            log.exception("sample download failed")
            self.failed.emit(f"The sample slide could not be downloaded ({type(exc).__name__}: {exc}).")
            return
        self.succeeded.emit(str(path))


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
        self.worker = SampleDownloadWorker(url, self)
        self.worker.progress.connect(self._on_progress)
        self.worker.succeeded.connect(self._on_success)
        self.worker.failed.connect(self._on_failure)
        self.worker.cancelled_.connect(self._on_cancelled)
        self.dialog.canceled.connect(self.worker.cancel)

    def start(self) -> None:
        self.dialog.setValue(0)
        self.dialog.show()
        self.worker.start()

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.dialog.setMaximum(1000)
            self.dialog.setValue(min(1000, int(done * 1000 / total)))

    def _finish(self) -> None:
        self.worker.wait(5000)
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
        self.worker.cancel()
        self.worker.wait(5000)


def sample_path_or_none() -> Path | None:
    """A sample slide already on this machine ($COCOPATH_SAMPLE or the verified cached download)."""
    from engine.api import sample

    return sample.local_sample()
