"""Slides open and read exactly what OpenSlide reads; bad input gives one clear sentence."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest

from engine.errors import SlideError
from engine.slide import RegionRequest, argb_to_rgb, open_slide


def _reference(path: Path, req: RegionRequest, ycbcr: bool = False) -> np.ndarray:
    """OpenSlide's pixels on white; ``ycbcr``: its samples are YCbCr, converted by Pillow's JPEG code."""
    from PIL import Image

    with openslide.OpenSlide(str(path)) as ref:
        img = ref.read_region((req.x, req.y), req.level, (req.width, req.height))
    rgba = np.asarray(img).astype(np.int32)
    if ycbcr:
        rgb = Image.fromarray(rgba[..., :3].astype(np.uint8), "YCbCr").convert("RGB")
        rgba = np.concatenate([np.asarray(rgb).astype(np.int32), rgba[..., 3:4]], -1)
    a = rgba[..., 3:4]
    return ((rgba[..., :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _all_slides(shared_data: Path) -> list[Path]:
    root = shared_data / "slides"
    return sorted(p for p in root.iterdir() if p.suffix == ".svs" or p.is_dir())


def test_every_shared_slide_reads_like_openslide(shared_data: Path) -> None:
    slides = _all_slides(shared_data)
    converted = []
    for path in slides:
        with open_slide(path) as s:
            converted.append(s._ycbcr)
    assert sum(converted) == 1  # only the DICOM sample's frames need converting
    assert len(slides) >= 3
    rng = np.random.default_rng(0)
    for path in slides:
        with open_slide(path) as s:
            info = s.info
            for level in range(min(info.level_count, 3)):
                w, h = info.level_dimensions[level]
                ds = info.level_downsamples[level]
                for _ in range(3):
                    rw, rh = min(w, 300), min(h, 200)
                    x, y = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
                    req = RegionRequest(info.path, level, round(x * ds), round(y * ds), rw, rh)
                    got = s.read_rgb(req)
                    assert got.shape == (rh, rw, 3)
                    ref = _reference(Path(info.path), req, ycbcr=s._ycbcr)  # the DICOM sample's frames
                    assert np.abs(got.astype(int) - ref).max() <= (2 if s._ycbcr else 1), (path, req)


def test_region_past_the_edge_is_white(small_svs: Path) -> None:
    with open_slide(small_svs) as s:
        w, h = s.info.dimensions
        rgb = s.read_rgb(RegionRequest(s.info.path, 0, w - 10, h - 10, 40, 40))
    assert (rgb[20:, 20:] == 255).all()
    assert (rgb[:10, :10] < 255).any()


def test_metadata_of_the_aperio_slide(small_svs: Path) -> None:
    with open_slide(small_svs) as s:
        i = s.info
        assert i.vendor == "aperio"
        assert i.dimensions == (2220, 2967)
        assert i.mpp == pytest.approx((0.499, 0.499))
        assert i.objective_power == 20
        assert i.base_magnification == 20
        assert set(i.associated_images) == {"label", "macro", "thumbnail"}
        label = s.associated_image("label")
        assert label.ndim == 3 and label.shape[2] == 3 and label.size > 0
        with pytest.raises(SlideError, match="no associated image 'nope'"):
            s.associated_image("nope")
        assert "aperio.AppMag" in i.properties


def test_missing_mpp_is_reported_not_fatal(no_mpp_svs: Path) -> None:
    with open_slide(no_mpp_svs) as s:
        assert s.info.mpp is None and not s.info.has_mpp
        assert s.info.base_magnification is None
        assert s.info.level_count == 2
        assert s.read_rgb(RegionRequest(s.info.path, 1, 0, 0, 64, 64)).shape == (64, 64, 3)


def test_dicom_opens_from_its_folder_and_from_any_file(dicom_dir: Path) -> None:
    files = sorted(dicom_dir.glob("*.dcm"))
    assert len(files) > 1
    with open_slide(dicom_dir) as from_dir, open_slide(files[-1]) as from_file:
        assert from_dir.info.level_count == from_file.info.level_count == 12
        assert from_dir.info.dimensions == (2220, 2967)
        req = RegionRequest(from_dir.info.path, 0, 500, 500, 128, 128)
        assert np.array_equal(from_dir.read_argb(req), from_file.read_argb(req))


def test_a_dicom_with_ycbcr_frames_under_an_rgb_header_reads_in_true_colour(dicom_dir: Path, small_svs: Path) -> None:
    """The DICOM sample is CMU-1-Small-Region converted (same pixel grid): its JPEG frames are YCbCr
    while its header says RGB, and OpenSlide returns the YCbCr samples. Read through the engine it
    matches the SVS it came from (JPEG re-encoding apart) and its glass is white, not salmon."""
    from engine.slide.source import OpenSlideSource

    with open_slide(dicom_dir) as dcm, open_slide(small_svs) as svs:
        assert dcm._ycbcr and not svs._ycbcr
        req = (0, 0, 0, 2220, 2967)
        a = dcm.read_rgb(RegionRequest(dcm.info.path, *req)).astype(np.int16)
        b = svs.read_rgb(RegionRequest(svs.info.path, *req)).astype(np.int16)
        assert np.abs(a - b).mean() < 6
        glass = a[:200, :200].reshape(-1, 3).mean(0)
        assert glass.min() > 225  # white, where the YCbCr samples read (245, 128, 128)
        raw = OpenSlideSource.__new__(OpenSlideSource)  # the same slide, read as OpenSlide gives it
        raw.__dict__.update(dcm.__dict__, _ycbcr=False)
        assert np.abs(raw.read_rgb(RegionRequest(dcm.info.path, *req)).astype(np.int16) - b).mean() > 40


def test_ycbcr_words_become_rgb() -> None:
    from engine.slide.source import ycbcr_argb_to_rgb

    # opaque Y/Cb/Cr of white, of pure red (76, 85, 255), transparent, half-transparent white
    words = np.array([[0xFFFF8080, 0xFF4C55FF, 0x00000000,
                       (0x80 << 24) | (128 << 16) | (64 << 8) | 64]], dtype=np.uint32)  # (255, 128, 128) at alpha 128
    ycbcr_argb_to_rgb(words)
    rgb = argb_to_rgb(words)
    assert np.abs(rgb[0, 0].astype(int) - 255).max() <= 1
    assert np.abs(rgb[0, 1].astype(int) - [255, 0, 0]).max() <= 2
    assert words[0, 2] == 0
    assert np.abs(rgb[0, 3].astype(int) - 255).max() <= 2  # white at half alpha over white


def test_thumbnail_fits(small_svs: Path) -> None:
    with open_slide(small_svs) as s:
        t = s.thumbnail(256)
    assert max(t.shape[:2]) == 256 and t.dtype == np.uint8


def test_argb_to_rgb_composites_on_white() -> None:
    # opaque red, transparent, half-transparent premultiplied blue
    argb = np.array([[0xFFFF0000, 0x00000000, 0x80000080]], dtype=np.uint32)
    rgb = argb_to_rgb(argb)
    assert rgb.tolist() == [[[255, 0, 0], [255, 255, 255], [127, 127, 255]]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d, src: d / "missing.svs", "no such file"),
        (lambda d, src: _write(d / "empty.svs", b""), "the file is empty"),
        (lambda d, src: _write(d / "notes.svs", b"just some text\n" * 100), "not a slide"),
        (lambda d, src: _write(d / "trunc.svs", src.read_bytes()[:400_000]), "truncated or corrupt"),
        (lambda d, src: _mkdir(d / "folder"), "no DICOM"),
    ],
    ids=["missing", "empty", "not-a-slide", "truncated", "empty-folder"],
)
def test_bad_files_give_one_clear_sentence(tmp_path: Path, small_svs: Path, make, message: str) -> None:
    path = make(tmp_path, small_svs)
    with pytest.raises(SlideError) as err:
        open_slide(path)
    text = str(err.value)
    assert message in text and path.name in text and "\n" not in text


def test_corrupt_tile_data_fails_clearly_on_read(tmp_path: Path, small_svs: Path) -> None:
    data = bytearray(small_svs.read_bytes())
    data[300_000:900_000] = bytes(600_000)  # zero tiles in the middle of level 0
    bad = _write(tmp_path / "zeroed.svs", bytes(data))
    with open_slide(bad) as s:
        w, h = s.info.dimensions
        with pytest.raises(SlideError, match="corrupt or truncated"):
            for y in range(0, h, 256):
                s.read_argb(RegionRequest(s.info.path, 0, 0, y, w, 256))


def test_closed_slide_and_bad_level(tmp_path: Path, small_svs: Path) -> None:
    copy = tmp_path / "copy.svs"
    shutil.copy(small_svs, copy)
    s = open_slide(copy)
    with pytest.raises(SlideError, match="no level 3"):
        s.read_argb(RegionRequest(s.info.path, 3, 0, 0, 8, 8))
    s.close()
    with pytest.raises(SlideError, match="closed"):
        s.read_argb(RegionRequest(s.info.path, 0, 0, 0, 8, 8))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_close_waits_for_reads_in_flight(small_svs: Path) -> None:
    import threading

    s = open_slide(small_svs)
    req = RegionRequest(s.info.path, 0, 0, 0, 2220, 2967)  # a slow, whole-slide read
    results: list[object] = []

    def reader() -> None:
        for _ in range(5):
            try:
                results.append(s.read_argb(req).shape)
            except SlideError as exc:
                results.append(str(exc))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    s.close()  # must not pull the handle from under the readers (OpenSlide would abort)
    for t in threads:
        t.join()
    assert len(results) == 15
    assert all(r == (2967, 2220) or "closed" in str(r) for r in results)


def test_associated_image_of_a_broken_slide_is_a_slide_error(tmp_path: Path, small_svs: Path) -> None:
    data = bytearray(small_svs.read_bytes())
    data[300_000:900_000] = bytes(600_000)
    bad = _write(tmp_path / "zeroed.svs", bytes(data))
    with open_slide(bad) as s:
        with pytest.raises(SlideError):
            s.read_argb(RegionRequest(s.info.path, 0, 0, 0, 2220, 2967))
        with pytest.raises(SlideError, match="label image cannot be read"):
            s.associated_image("label")
