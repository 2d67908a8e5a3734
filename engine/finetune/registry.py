"""The model registry of a project: every student version a round (or an import) produced.

Layout under ``<project>/models/``::

    v0001/model.safetensors   weights, the card in the safetensors header (never a pickle)
    v0001/model.json          the same card as JSON (what ``load_spec`` and the app read)
    v0001/version.json        registry record: parent, created, metrics, note
    v0002/…
    active.json               {"version": "v0002", "previous": "v0001", "at": …}
    .tmp-<pid>-<hex>/         a version being written (ignored; cleaned once its writer is gone)

A version is written into a temporary folder and renamed into place, so a reader sees a whole
version or none, and a killed writer leaves only a temporary folder that nobody reads. Versions are
never changed or deleted; ``active.json`` is replaced atomically (temp + fsync + rename).

Each version's card carries ``version`` = ``<model name>-<vNNNN>-<weights digest>``, which
:func:`engine.inference.spec.load_spec` takes as the spec's version, the prediction cache's key:
two versions of one registry never share it, and two projects share it only for identical weights.

Reading the registry (listing, the active version, cards) needs no torch; writing weights does.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.atomic import atomic_replace, atomic_write, fsync_dir
from engine.errors import CocoPathError
from engine.model_card import ModelCardError
from engine.resources import resource_path
from engine.slide.sample import sha256_of as file_sha256

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
RECORD_FILE = "version.json"
ACTIVE_FILE = "active.json"
TEMP_PREFIX = ".tmp-"
_VERSION_RE = re.compile(r"^v(\d{4,})$")
#: The shipped models (``resources/models``: package data, see :mod:`engine.resources`).
SHIPPED_MODELS = resource_path("models")


class RegistryError(CocoPathError):
    """The model registry cannot do what was asked (unknown version, nothing to roll back to, …)."""


class RegistryWriteError(RegistryError, OSError):
    """A registry file could not be written (full disk, read-only folder): one line for the user,
    and still an :class:`OSError` for code that handles failed writes."""


@dataclass(frozen=True)
class ModelVersion:
    """One version of the project's student, as stored in the registry (read-only)."""

    version: str
    path: Path
    parent: str | None
    created: str
    metrics: dict = field(default_factory=dict)
    card: dict = field(default_factory=dict)
    note: str = ""

    @property
    def json_path(self) -> Path:
        return self.path.with_suffix(".json")

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "path": str(self.path), "parent": self.parent,
                "created": self.created, "metrics": self.metrics, "note": self.note,
                "card": self.card}


def _shipped(env_var: str, pattern: str, what: str) -> Path | None:
    """``$env_var`` when set (None if it is not a file: what the user set wins, another model is
    never used in its place), else the first shipped ``resources/models/<pattern>``, else None."""
    env = os.environ.get(env_var)
    if env:
        p = Path(env).expanduser()
        if p.is_file():
            return p
        log.warning("%s=%s is not a file: no default %s", env_var, env, what)
        return None
    found = sorted(SHIPPED_MODELS.glob(pattern))
    return found[0] if found else None


def default_model_path() -> Path | None:
    """The shipped default student: ``$COCOPATH_DEFAULT_MODEL`` when set (None if it is not a file:
    what the user set wins, another model is never used in its place), else the first
    shipped ``resources/models/*student*.safetensors``, else None."""
    return _shipped("COCOPATH_DEFAULT_MODEL", "*student*.safetensors", "model")


def default_teacher_path() -> Path | None:
    """The shipped teacher, if any: ``$COCOPATH_DEFAULT_TEACHER`` when set (None if not a file), else
    ``resources/models/*teacher*.safetensors``, else None."""
    return _shipped("COCOPATH_DEFAULT_TEACHER", "*teacher*.safetensors", "teacher")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class ModelRegistry:
    """The versions in one folder (``root``); see the module docstring. Safe to read from several
    processes while one writes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def of_project(cls, project_dir: Path) -> ModelRegistry:
        return cls(Path(project_dir) / "models")

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # -- reading ---------------------------------------------------------------------------------

    def _read_version(self, folder: Path) -> ModelVersion | None:
        model = folder / MODEL_FILE
        try:
            record = json.loads((folder / RECORD_FILE).read_text())
            card = json.loads(model.with_suffix(".json").read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: not a readable registry version (%s): skipped", folder, exc)
            return None
        if not model.is_file():
            log.warning("%s: no %s: skipped", folder, MODEL_FILE)
            return None
        if not isinstance(record, dict) or not isinstance(card, dict):
            log.warning("%s: its record or card is not a JSON object: skipped", folder)
            return None
        return ModelVersion(folder.name, model, record.get("parent"), str(record.get("created", "")),
                            dict(record.get("metrics") or {}), card, str(record.get("note", "")))

    def versions(self) -> list[ModelVersion]:
        """Every complete version, oldest first (temporary folders are never listed)."""
        if not self.root.is_dir():
            return []
        found = []
        for d in self.root.iterdir():
            m = _VERSION_RE.match(d.name)
            if m and d.is_dir():
                found.append((int(m.group(1)), d))
        out = [self._read_version(d) for _, d in sorted(found)]
        return [v for v in out if v is not None]

    def get(self, version: str) -> ModelVersion:
        folder = self.root / str(version)
        if not _VERSION_RE.match(str(version)) or not folder.is_dir():
            names = ", ".join(v.version for v in self.versions()) or "none yet"
            raise RegistryError(f"no model version {version!r} in {self.root} (versions: {names})")
        v = self._read_version(folder)
        if v is None:
            raise RegistryError(f"model version {version} in {self.root} is damaged")
        return v

    def active_name(self) -> str | None:
        try:
            return str(json.loads((self.root / ACTIVE_FILE).read_text())["version"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable (%s): no active version", self.root / ACTIVE_FILE, exc)
            return None

    def active(self) -> ModelVersion | None:
        """The version predictions and the next round start from, or None."""
        name = self.active_name()
        if name is None:
            return None
        try:
            return self.get(name)
        except RegistryError:
            log.warning("%s names %s, which is not in the registry: no active version",
                        self.root / ACTIVE_FILE, name)
            return None

    def weights_digest(self, version: str) -> str:
        """SHA-256 (hex) of the version's safetensors file."""
        return file_sha256(self.get(version).path)

    def teacher_path(self) -> Path | None:
        """The project's own teacher (``models/teacher.safetensors``), when one was put there."""
        p = self.root / "teacher.safetensors"
        return p if p.is_file() else None

    # -- switching -------------------------------------------------------------------------------

    def activate(self, version: str) -> ModelVersion:
        """Make ``version`` the active one (atomically replaces ``active.json``)."""
        v = self.get(version)
        previous = self.active_name()
        record = {"version": v.version, "previous": previous, "at": utc_now()}
        try:
            atomic_write(self.root / ACTIVE_FILE, json.dumps(record, indent=1).encode())
        except OSError as exc:
            raise RegistryWriteError(f"{self.root / ACTIVE_FILE}: could not be written "
                                f"({exc.strerror or exc}): the active version is unchanged") from None
        log.info("%s: active model %s (was %s)", self.root, v.version, previous)
        return v

    def rollback(self) -> ModelVersion:
        """Activate the active version's parent."""
        current = self.active()
        if current is None:
            raise RegistryError(f"{self.root}: no active model version to roll back from")
        if current.parent is None:
            raise RegistryError(f"model version {current.version} has no parent: there is nothing "
                                f"to roll back to")
        return self.activate(current.parent)

    # -- writing ---------------------------------------------------------------------------------

    def clean(self) -> list[Path]:
        """Remove temporary folders whose writer process is gone; returns what was removed."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for d in self.root.iterdir():
            if not d.name.startswith(TEMP_PREFIX):
                continue
            try:
                pid = int(d.name[len(TEMP_PREFIX):].split("-")[0])
            except ValueError:
                pid = -1
            if _pid_alive(pid):
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            log.info("removed %s, left by a stopped writer", d)
        return removed

    def _next_number(self) -> int:
        numbers = [0]
        if self.root.is_dir():
            numbers += [int(m.group(1)) for d in self.root.iterdir()
                        if (m := _VERSION_RE.match(d.name))]
        return max(numbers) + 1

    def _commit(self, write: Any, parent: str | None, metrics: dict, note: str) -> ModelVersion:
        """Write a version with ``write(folder, version)`` into a temporary folder, then rename it
        to the next free ``vNNNN`` (retrying if another writer took that number meanwhile)."""
        if parent is not None:
            self.get(parent)
        try:
            return self._write_version(write, parent, metrics, note)
        except OSError as exc:  # a full disk, a read-only project: nothing half-written stays
            raise RegistryWriteError(f"{self.root}: a new model version could not be written "
                                f"({exc.strerror or exc})") from None

    def _write_version(self, write: Any, parent: str | None, metrics: dict, note: str) -> ModelVersion:
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean()
        for _ in range(100):
            version = f"v{self._next_number():04d}"
            tmp = self.root / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
            tmp.mkdir()
            try:
                write(tmp, version)
                record = {"version": version, "parent": parent, "created": utc_now(),
                          "metrics": metrics, "note": note}
                atomic_write(tmp / RECORD_FILE, json.dumps(record, indent=1, default=str).encode())
                fsync_dir(tmp)
                try:
                    os.rename(tmp, self.root / version)
                except OSError:
                    if (self.root / version).exists():  # another writer took the number
                        continue
                    raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            fsync_dir(self.root)
            log.info("%s: published %s (parent %s): %s", self.root, version, parent, note)
            return self.get(version)
        raise RegistryError(f"{self.root}: could not find a free version number")

    def publish(self, model: nn.Module, meta: dict, parent: str | None, metrics: dict, note: str,
                activate: bool) -> ModelVersion:
        """Save ``model`` with its card ``meta`` (which must hold ``model``, its config) as the next
        version; make it active if ``activate``."""
        from engine.training.checkpoints import save_model

        state = model.state_dict()
        name = str((meta.get("model") or {}).get("name") or "model")
        digest = tensors_digest(state)

        def write(folder: Path, version: str) -> None:
            card = {**meta, "version": f"{name}-{version}-{digest[:12]}",
                    "registry": {"version": version, "parent": parent, "weights": digest}}
            save_model(folder / MODEL_FILE, model, card)

        v = self._commit(write, parent, dict(metrics), note)
        if activate:
            self.activate(v.version)
        return v

    def import_model(self, path: Path, note: str = "") -> ModelVersion:
        """Add a CoCoPath ``.safetensors`` checkpoint as a new root version (no parent). Its weights
        are checked against the architecture its card names; pickles are refused. The first version
        of an empty registry also becomes the active one."""
        from engine.training.checkpoints import CheckpointError, load_model, read_safetensors, save_tensors

        path = Path(path).expanduser()
        if path.suffix.lower() != ".safetensors":
            raise RegistryError(f"{path}: only .safetensors checkpoints can be imported "
                                f"(pickles and torch.save files are refused)")
        try:
            # the card checked (engine.model_card), weights finite and fitting the architecture
            model, meta = load_model(path)
            tensors, _ = read_safetensors(path)
        except ModelCardError as exc:  # already one line naming the file and the field
            raise RegistryError(str(exc)) from None
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{path}: cannot be imported ({exc})") from exc
        del model
        name = str((meta.get("model") or {}).get("name") or "model")
        digest = tensors_digest(tensors)
        meta = {k: v for k, v in meta.items() if k not in ("version", "registry")}
        meta["imported_from"] = {"path": str(path.resolve()), "sha256": file_sha256(path)}
        first = not self.versions()

        def write(folder: Path, version: str) -> None:
            card = {**meta, "version": f"{name}-{version}-{digest[:12]}",
                    "registry": {"version": version, "parent": None, "weights": digest}}
            save_tensors(folder / MODEL_FILE, tensors, card)
            atomic_write(folder / "model.json", json.dumps(card, indent=1).encode())

        v = self._commit(write, None, card_metrics(meta), note or f"imported from {path.name}")
        if first or self.active() is None:
            self.activate(v.version)
        return v

    def export_model(self, version: str, dest: Path) -> Path:
        """Copy a version to ``dest`` (.safetensors) with its ``.json`` card beside it."""
        v = self.get(version)
        dest = Path(dest).expanduser()
        if dest.suffix.lower() != ".safetensors":
            raise RegistryError(f"{dest}: the exported file's name must end in .safetensors")
        card = dest.with_suffix(".json")
        for target in (dest, card):
            if target.is_dir():
                raise RegistryError(f"{target}: is a folder: the export needs a file name there")
        if _within(dest, self.root):
            raise RegistryError(f"{dest}: is inside the model registry {self.root}, whose versions "
                                f"are never changed: export elsewhere")

        def write_card(tmp_card: Path) -> None:  # the weights are renamed into place only once the
            tmp_card.write_bytes(json.dumps(v.card, indent=1).encode())  # card is written too
            atomic_replace(dest, lambda tmp: shutil.copyfile(v.path, tmp))

        try:
            atomic_replace(card, write_card)  # temporary files never stay behind
        except OSError as exc:  # read-only folder, full disk
            raise RegistryWriteError(f"{dest}: could not be written ({exc.strerror or exc})") from None
        return dest

    def ensure_seeded(self, default_model: Path | None) -> ModelVersion | None:
        """An empty registry gets ``default_model`` as v0001, active; otherwise nothing changes.
        Returns the active version (None when the registry is empty and there is no default)."""
        if self.versions():
            return self.active()
        if default_model is None or not Path(default_model).is_file():
            return None
        v = self.import_model(Path(default_model), note=f"the default model {Path(default_model).name}")
        return self.activate(v.version)


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, once links are resolved."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def card_metrics(meta: dict[str, Any]) -> dict[str, float]:
    """The validation scores a trained checkpoint's card records (``metrics.val``), flattened."""
    val = (meta.get("metrics") or {}).get("val") if isinstance(meta.get("metrics"), dict) else None
    if not isinstance(val, dict):
        return {}
    return {f"val_{k}": float(val[k]) for k in ("miou", "dice") if isinstance(val.get(k), (int, float))}


def tensors_digest(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a state dict's names, dtypes, shapes and bytes (file-format independent)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(dtype=_uint8()).numpy().tobytes())
    return h.hexdigest()


def _uint8() -> Any:
    import torch

    return torch.uint8
