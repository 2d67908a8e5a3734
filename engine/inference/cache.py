"""The prediction cache: one slide's probability map for one model version, as tiles on disk.

Layout of a cache folder (one per slide and model)::

    cache.json        format, slide, model card and version, grid, level sizes, channels
    tissue.npy        bool (rows, cols): which level-0 tiles hold tissue (the others never run)
    L0/c_r.z ...      level-0 tiles: zlib'd uint8 (tile, tile, channels), one per foreground class
    L1/ …             each level halves the one below (2×2 mean, rounded), up to one tile

Level 0 is the prediction grid (``grid.downsample`` slide pixels per pixel); level k is 2^k coarser.
A level-0 tile file exists once that tile is final; its ancestors are rebuilt from their children
at once or, for a writer that batches them, at its next :meth:`PredictionCache.flush` (the
inference writer flushes twice a second and at the end), so any level can be read while the map
fills in. A parent older than a child (a run stopped in between) is rebuilt when the cache opens.
Files are replaced atomically (temp + rename); a damaged file reads as missing. The whole map is
never in memory. Emptying a cache removes only a cache's own files (``cache.json``, ``tissue.npy``,
``L<k>/`` tiles, temporary files): a folder that holds anything else, or is a link, is refused and
left as it is, so a cache root named wrongly can never delete someone's folder. No torch here: the
viewer reads caches through :meth:`PredictionCache.read_region` and :meth:`PredictionCache.done_tiles`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
import zlib
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import CocoPathError
from engine.inference.geometry import PredictionGrid

log = logging.getLogger(__name__)

FORMAT = "cocopath-prediction/1"


class CacheError(CocoPathError):
    """A prediction cache cannot be read (missing, damaged, or from another format)."""


#: Added to the digest of DICOM slides (a ``.dcm`` file or a folder): since the engine converts
#: the YCbCr frames OpenSlide hands back under an RGB header, their predictions made on the
#: miscoloured pixels must not be reused.
DICOM_PIXELS = "\0dicom-true-colour"


def slide_key(path: str | Path) -> str:
    """A folder name for a slide: its stem and a digest of its path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    pixels = DICOM_PIXELS if p.is_dir() or p.suffix.lower() == ".dcm" else ""
    digest = hashlib.sha1(f"{p}\0{st.st_size}\0{st.st_mtime_ns}{pixels}".encode()).hexdigest()[:10]
    return f"{p.stem}-{digest}"


def level_sizes(size: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """(width, height) of each cache level, halving until a level fits in one tile."""
    dims = [size]
    while max(dims[-1]) > tile:
        w, h = dims[-1]
        dims.append((math.ceil(w / 2), math.ceil(h / 2)))
    return dims


def halve(a: np.ndarray) -> np.ndarray:
    """2×2 mean of a (2h, 2w, c) uint8 array, rounded half up."""
    s = a[0::2, 0::2].astype(np.uint16)
    s += a[1::2, 0::2]
    s += a[0::2, 1::2]
    s += a[1::2, 1::2]
    s += 2
    s >>= 2
    return s.astype(np.uint8)


def grid_dict(grid: PredictionGrid) -> dict[str, Any]:
    """The grid as ``cache.json`` stores it; ``origin`` only where it is not 0, so caches written
    before the field existed still match their grid (and are not emptied)."""
    d = asdict(grid)
    if not d.get("origin"):
        d.pop("origin", None)
    return d


class PredictionCache:
    """A tiled multi-level probability map on disk. Thread-safe (one lock around tile files)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_file = self.root / "cache.json"
        try:
            self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        except FileNotFoundError:
            raise CacheError(f"{self.root}: no prediction cache here") from None
        except (OSError, ValueError) as exc:
            raise CacheError(f"{self.root}: damaged prediction cache ({exc})") from None
        if self.meta.get("format") != FORMAT:
            raise CacheError(f"{self.root}: not a {FORMAT} cache")
        g = self.meta["grid"]
        self.grid = PredictionGrid(**{**g, "slide_size": tuple(g["slide_size"])})
        self.tile = self.grid.tile
        self.channels = int(self.meta["channels"])
        self.levels = [tuple(d) for d in self.meta["levels"]]
        self.version = str(self.meta["version"])
        self.tissue = np.load(self.root / "tissue.npy")
        self._lock = threading.RLock()
        self._lru: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._lru_max = 64
        self._writes = 0  # tiles stored so far: a read that raced a write is not remembered
        self._dirty: set[tuple[int, int, int]] = set()  # (level, col, row) parents to rebuild
        self._done = {(int(c), int(r)) for c, r in
                      (f.stem.split("_") for f in (self.root / "L0").glob("*.z"))}

    def refresh(self) -> None:
        """Forget remembered tiles and re-list the final ones (another process is writing)."""
        with self._lock:
            self._lru.clear()
            self._writes += 1  # a read in flight may hold a tile from before: not remembered
            self._done = {(int(c), int(r)) for c, r in
                          (f.stem.split("_") for f in (self.root / "L0").glob("*.z"))}

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | Path, grid: PredictionGrid, version: str, channels: int,
             tissue: np.ndarray, model: dict[str, Any] | None = None) -> "PredictionCache":
        """Open the cache at ``root`` for writing; one of another version or grid is emptied first."""
        root = Path(root)
        want = {"format": FORMAT, "version": version, "grid": grid_dict(grid), "channels": channels,
                "levels": [list(d) for d in level_sizes(grid.size, grid.tile)]}
        if grid.tile % 2:
            raise CacheError(f"cache tiles must have an even size, not {grid.tile}")
        cols, rows = grid.shape
        if tissue.shape != (rows, cols):
            raise ValueError(f"tissue tiles {tissue.shape} do not match the grid {(rows, cols)}")
        try:
            have = json.loads((root / "cache.json").read_text())
        except (OSError, ValueError):
            have = None
        same = have is not None and all(have.get(k) == json.loads(json.dumps(v))
                                        for k, v in want.items())
        if not same:
            if have is not None:
                log.info("%s: model version or grid changed: prediction cache emptied", root)
            if root.exists() or root.is_symlink():
                _empty(root)
            root.mkdir(parents=True, exist_ok=True)
            np.save(root / "tissue.npy", tissue.astype(bool))
            _atomic(root / "cache.json",
                    json.dumps({**want, "model": model or {}}, indent=1).encode())
        cache = cls(root)
        if same and not np.array_equal(cache.tissue, tissue.astype(bool)):
            np.save(root / "tissue.npy", tissue.astype(bool))  # tissue detection changed: keep tiles
            cache.tissue = tissue.astype(bool)
        if same:
            cache.repair_pyramid()
        return cache

    # -- state ----------------------------------------------------------------------------------

    @property
    def level_count(self) -> int:
        return len(self.levels)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the foreground classes (one per channel), from the model card it was written
        with; "class 1", "class 2", … when the card does not list them."""
        classes = (self.meta.get("model") or {}).get("classes") or []
        if len(classes) == self.channels + 1:
            return tuple(str(c) for c in classes[1:])
        return tuple(f"class {i}" for i in range(1, self.channels + 1))

    def level_downsample(self, level: int) -> float:
        """Slide level-0 pixels per pixel of cache level ``level``."""
        return self.grid.downsample * 2**level

    def done_tiles(self) -> set[tuple[int, int]]:
        """(col, row) of the level-0 tiles that are final."""
        with self._lock:
            return set(self._done)

    def is_done(self, col: int, row: int) -> bool:
        with self._lock:
            return (col, row) in self._done

    @property
    def tissue_tiles(self) -> int:
        return int(self.tissue.sum())

    @property
    def complete(self) -> bool:
        with self._lock:
            return all((int(c), int(r)) in self._done for r, c in zip(*np.nonzero(self.tissue)))

    # -- tiles ----------------------------------------------------------------------------------

    def _path(self, level: int, col: int, row: int) -> Path:
        return self.root / f"L{level}" / f"{col}_{row}.z"

    def read_tile(self, level: int, col: int, row: int) -> np.ndarray | None:
        """One tile as (tile, tile, channels) uint8, or None when it was never written."""
        key = (level, col, row)
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
            writes = self._writes
        p = self._path(level, col, row)
        try:  # outside the lock: threads decompress tiles in parallel (zlib lets go of the GIL)
            data = zlib.decompress(p.read_bytes())
            arr = np.frombuffer(data, np.uint8).reshape(self.tile, self.tile, self.channels)
        except FileNotFoundError:
            return None
        except (OSError, zlib.error, ValueError):
            log.warning("%s: damaged tile, read as missing", p)
            return None
        with self._lock:
            if key in self._lru:  # stored meanwhile: that one is at least as new
                return self._lru[key]
            if self._writes == writes:  # else the file may have changed under us: not remembered
                self._remember(key, arr)
        return arr

    def _remember(self, key: tuple[int, int, int], arr: np.ndarray) -> None:
        self._lru[key] = arr
        self._lru.move_to_end(key)
        while len(self._lru) > self._lru_max:
            self._lru.popitem(last=False)

    def _store(self, level: int, col: int, row: int, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
        arr.setflags(write=False)
        p = self._path(level, col, row)
        p.parent.mkdir(exist_ok=True)
        _atomic(p, zlib.compress(arr.tobytes(), 1))
        self._writes += 1
        self._remember((level, col, row), arr)

    def write_tile(self, col: int, row: int, probs: np.ndarray, flush: bool = True) -> None:
        """Store a final level-0 tile ((tile, tile, channels) uint8); the levels above are rebuilt
        now, or at the next :meth:`flush` when ``flush`` is False (a writer that batches them)."""
        t = self.tile
        if probs.shape != (t, t, self.channels) or probs.dtype != np.uint8:
            raise ValueError(f"tile must be uint8 {(t, t, self.channels)}, got {probs.dtype} {probs.shape}")
        arr = self._crop_edge(0, col, row, probs)
        with self._lock:
            self._store(0, col, row, arr)
            self._done.add((col, row))
            if self.level_count > 1:
                self._dirty.add((1, col // 2, row // 2))
            if flush:
                self.flush()

    def flush(self) -> int:
        """Rebuild every parent tile whose children changed, level by level; returns how many."""
        n = 0
        with self._lock:
            for level in range(1, self.level_count):
                todo = sorted((c, r) for lv, c, r in self._dirty if lv == level)
                self._dirty -= {(level, c, r) for c, r in todo}
                for pc, pr in todo:
                    self._rebuild(level, pc, pr)
                    if level + 1 < self.level_count:
                        self._dirty.add((level + 1, pc // 2, pr // 2))
                n += len(todo)
        return n

    def _rebuild(self, level: int, pc: int, pr: int) -> None:
        """Parent tile (pc, pr) of ``level`` from its four children (missing ones read as 0)."""
        out = np.zeros((self.tile, self.tile, self.channels), np.uint8)
        half = self.tile // 2
        for dr in (0, 1):
            for dc in (0, 1):
                child = self.read_tile(level - 1, 2 * pc + dc, 2 * pr + dr)
                if child is not None:
                    out[dr * half:(dr + 1) * half, dc * half:(dc + 1) * half] = halve(child)
        self._store(level, pc, pr, self._crop_edge(level, pc, pr, out))

    def _crop_edge(self, level: int, col: int, row: int, arr: np.ndarray) -> np.ndarray:
        """Zero the part of a tile beyond its level's edge (so coarser levels never see it)."""
        w, h = self.levels[level]
        t = self.tile
        vw, vh = w - col * t, h - row * t
        if vw >= t and vh >= t:
            return arr
        arr = arr.copy()
        arr[max(vh, 0):] = 0
        arr[:, max(vw, 0):] = 0
        return arr

    def repair_pyramid(self) -> int:
        """Rebuild parents older than a child (a run stopped between the two writes); returns count."""
        fixed = 0
        with self._lock:
            for level in range(1, self.level_count):
                stale: set[tuple[int, int]] = set()
                for f in (self.root / f"L{level - 1}").glob("*.z"):
                    c, r = map(int, f.stem.split("_"))
                    parent = self._path(level, c // 2, r // 2)
                    if not parent.exists() or parent.stat().st_mtime_ns < f.stat().st_mtime_ns:
                        stale.add((c // 2, r // 2))
                for pc, pr in stale:
                    self._rebuild(level, pc, pr)
                fixed += len(stale)
        if fixed:
            log.info("%s: %d pyramid tile(s) rebuilt", self.root, fixed)
        return fixed

    # -- regions ----------------------------------------------------------------------------------

    def read_region(self, level: int, x: float, y: float, w: int, h: int) -> np.ndarray:
        """Probabilities (h, w, channels) uint8 of cache level ``level`` at slide level-0 (x, y).

        Like ``RegionRequest``: (x, y) is the top-left corner in slide level-0 pixels, (w, h) the
        size in pixels of the cache level. Tiles not predicted yet (or background) read as 0.
        """
        if not 0 <= level < self.level_count:
            raise CacheError(f"{self.root}: has no level {level} (levels 0–{self.level_count - 1})")
        ds = self.level_downsample(level)
        px, py = int(round(x / ds)), int(round(y / ds))
        out = np.zeros((h, w, self.channels), np.uint8)
        t = self.tile
        lw, lh = self.levels[level]
        for r in range(max(0, py // t), min(math.ceil(lh / t), -(-(py + h) // t))):
            for c in range(max(0, px // t), min(math.ceil(lw / t), -(-(px + w) // t))):
                tile = self.read_tile(level, c, r)
                if tile is None:
                    continue
                x0, y0 = max(px, c * t), max(py, r * t)
                x1, y1 = min(px + w, (c + 1) * t), min(py + h, (r + 1) * t)
                out[y0 - py:y1 - py, x0 - px:x1 - px] = tile[y0 - r * t:y1 - r * t, x0 - c * t:x1 - c * t]
        return out

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest cache level not coarser than ``downsample`` (slide level-0 pixels per pixel)."""
        best = 0
        for k in range(self.level_count):
            if self.level_downsample(k) <= downsample * 1.0001:
                best = k
        return best


_TILE = re.compile(r"-?\d+_-?\d+\.z")
_TEMP = re.compile(r"\..+\.tmp")
_LEVEL = re.compile(r"L\d+")
_FILES = ("cache.json", "tissue.npy")


def _empty(root: Path) -> None:
    """Remove a prediction cache's own files from ``root``, which stays (empty). A link, a file, or a
    folder holding anything a cache does not write raises :class:`CacheError` and nothing is
    removed: only what is certainly a cache is ever deleted."""
    if root.is_symlink() or not root.is_dir():
        raise CacheError(f"{root}: is not a prediction cache folder (a link or a file): left as it is")
    entries = list(root.iterdir())
    for e in entries:
        plain_file = e.is_file() and not e.is_symlink()
        if plain_file and (e.name in _FILES or _TEMP.fullmatch(e.name)):
            continue
        if _LEVEL.fullmatch(e.name) and e.is_dir() and not e.is_symlink() and all(
                f.is_file() and not f.is_symlink() and (_TILE.fullmatch(f.name) or _TEMP.fullmatch(f.name))
                for f in e.iterdir()):
            continue
        raise CacheError(f"{root}: holds {e.name!r}, which a prediction cache never writes: the folder "
                         f"is not emptied (move it away or choose another folder)")
    for e in entries:
        if e.is_dir():
            shutil.rmtree(e)
        else:
            e.unlink()


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
