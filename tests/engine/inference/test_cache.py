"""The prediction cache: survives a restart, is emptied by a new model version, reads regions, and
can be read without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from engine.inference.cache import CacheError, PredictionCache, halve, level_sizes
from engine.inference.geometry import PredictionGrid

GRID = PredictionGrid("slide.tif", (1000, 700), 2.0, 1, 2.0, 64, 16)


def tissue_all() -> np.ndarray:
    cols, rows = GRID.shape
    return np.ones((rows, cols), bool)


def random_tile(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 1), dtype=np.uint8)


def test_tiles_survive_a_restart_at_every_level(tmp_path):
    cache = PredictionCache.open(tmp_path / "c", GRID, "v1", 1, tissue_all())
    for i, (c, r) in enumerate([(0, 0), (1, 0), (3, 2), (7, 5)]):
        cache.write_tile(c, r, random_tile(i))
    again = PredictionCache(tmp_path / "c")  # a new object, as after a restart
    assert again.done_tiles() == cache.done_tiles() == {(0, 0), (1, 0), (3, 2), (7, 5)}
    for k in range(cache.level_count):
        w, h = cache.levels[k]
        np.testing.assert_array_equal(again.read_region(k, 0, 0, w, h), cache.read_region(k, 0, 0, w, h))
    reopened = PredictionCache.open(tmp_path / "c", GRID, "v1", 1, tissue_all())
    assert reopened.done_tiles() == cache.done_tiles()


def test_a_new_model_version_empties_the_cache(tmp_path):
    cache = PredictionCache.open(tmp_path / "c", GRID, "v1", 1, tissue_all())
    cache.write_tile(0, 0, random_tile(0))
    new = PredictionCache.open(tmp_path / "c", GRID, "v2", 1, tissue_all())
    assert new.done_tiles() == set() and new.version == "v2"
    assert not new.read_region(0, 0, 0, 64, 64).any()
    assert PredictionCache(tmp_path / "c").version == "v2"


def test_read_region_crosses_tiles_and_levels(tmp_path):
    cache = PredictionCache.open(tmp_path / "c", GRID, "v1", 1, tissue_all())
    a, b = random_tile(1), random_tile(2)
    cache.write_tile(0, 0, a)
    cache.write_tile(1, 0, b)
    # level 0: 2 slide px per pixel; a window straddling the two tiles
    got = cache.read_region(0, 2 * 50, 2 * 10, 30, 20)[..., 0]
    want = np.concatenate([a[..., 0], b[..., 0]], axis=1)[10:30, 50:80]
    np.testing.assert_array_equal(got, want)
    lvl1 = cache.read_region(1, 0, 0, 64, 32)  # level 1 tile (0, 0) holds both halved
    np.testing.assert_array_equal(lvl1[:, :32], halve(a))
    np.testing.assert_array_equal(lvl1[:, 32:], halve(b))
    assert cache.best_level_for_downsample(5.0) == 1 and cache.level_downsample(1) == 4.0


def test_a_damaged_tile_reads_as_missing_and_a_stale_parent_is_rebuilt(tmp_path):
    cache = PredictionCache.open(tmp_path / "c", GRID, "v1", 1, tissue_all())
    cache.write_tile(0, 0, random_tile(0))
    (tmp_path / "c" / "L0" / "0_0.z").write_bytes(b"not zlib")
    assert PredictionCache(tmp_path / "c").read_tile(0, 0, 0) is None
    (tmp_path / "c" / "L1" / "0_0.z").unlink()  # as if stopped between a tile and its parent
    cache2 = PredictionCache.open(tmp_path / "c", GRID, "v1", 1, tissue_all())
    assert cache2.read_tile(1, 0, 0) is not None


def test_level_sizes_halve_to_one_tile():
    assert level_sizes((500, 350), 64) == [(500, 350), (250, 175), (125, 88), (63, 44)]


def test_missing_cache_is_a_one_sentence_error(tmp_path):
    with pytest.raises(CacheError, match="no prediction cache"):
        PredictionCache(tmp_path / "nothing")


def test_reader_api_imports_without_torch():
    code = ("import sys, engine.inference, engine.inference.pipeline, engine.inference.job;"
            "from engine.inference import PredictionCache, load_spec;"
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_batched_writes_reach_the_coarser_levels_at_flush(tmp_path):
    cache = PredictionCache.open(tmp_path / "c", GRID, "v1", 1, tissue_all())
    a = random_tile(3)
    cache.write_tile(0, 0, a, flush=False)
    assert cache.read_tile(1, 0, 0) is None  # not yet
    assert cache.flush() == cache.level_count - 1  # one parent per level above
    np.testing.assert_array_equal(cache.read_region(1, 0, 0, 32, 32), halve(a))
    assert PredictionCache(tmp_path / "c").read_tile(cache.level_count - 1, 0, 0) is not None


@pytest.mark.parametrize("same_tile", [True, False])
def test_a_read_that_races_a_write_never_leaves_the_older_tile_remembered(tmp_path, monkeypatch, same_tile):
    """Tiles are decompressed outside the cache's lock (readers in parallel); a write landing while
    a read of the older bytes is in flight must win: the next read sees the newer tile."""
    import engine.inference.cache as cache_mod

    cache = PredictionCache.open(tmp_path / "c", GRID, "v1", 1, tissue_all())
    old, new = random_tile(1), random_tile(2)
    cache.write_tile(0, 0, old, flush=False)
    cache.write_tile(1, 0, old, flush=False)
    cache.refresh()  # nothing remembered: the next read goes to the file
    real = cache_mod.zlib.decompress
    raced = []

    def racing(data: bytes) -> bytes:
        if not raced:  # the writer stores a newer tile while this read holds the older bytes
            raced.append(True)
            cache.write_tile(0 if same_tile else 1, 0, new, flush=False)
            if not same_tile:  # … and the older bytes of tile (0, 0) are then replaced on disk
                cache._store(0, 0, 0, new)
                cache.refresh()
        return real(data)

    monkeypatch.setattr(cache_mod.zlib, "decompress", racing)
    cache.read_tile(0, 0, 0)  # raced
    monkeypatch.setattr(cache_mod.zlib, "decompress", real)
    np.testing.assert_array_equal(cache.read_tile(0, 0, 0), new)


def test_dicom_predictions_made_before_the_colour_fix_are_not_reused(tmp_path, dicom_dir, small_svs):
    """A DICOM slide's cache folder changed with the YCbCr fix (its old predictions saw false
    colours); every other slide keeps its folder, so its predictions stay."""
    import hashlib

    from engine.inference.cache import slide_key

    def before_the_fix(p):
        st = p.resolve().stat()
        return f"{p.stem}-" + hashlib.sha1(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:10]

    one = sorted(dicom_dir.glob("*.dcm"))[0]
    for path in (dicom_dir, one):
        assert slide_key(path) != before_the_fix(path) and slide_key(path) == slide_key(path)
    assert slide_key(small_svs) == before_the_fix(small_svs)
