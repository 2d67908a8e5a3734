"""Slide sources: the ``SlideSource`` protocol and its OpenSlide implementation.

This is the only module that imports openslide. Every format OpenSlide 4 reads is supported (Aperio
SVS, Hamamatsu NDPI/VMS, MIRAX MRXS, Leica SCN, Ventana BIF, Philips TIFF, Zeiss CZI, generic tiled
TIFF, DICOM WSI). A DICOM slide opens from its folder or from any one of its ``.dcm`` files.

Pixels come back in OpenSlide's native form, premultiplied ARGB as 32-bit words (``read_argb``; the
GUI wraps them without conversion) or as RGB composited on white (``read_rgb``; for analysis).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Protocol, runtime_checkable

import numpy as np

from engine.errors import SlideError
from engine.slide.request import RegionRequest, TileGrid, best_level_for_downsample

log = logging.getLogger(__name__)

#: Typical scanner objective power for a given microns-per-pixel (10× ≈ 1 µm/px).
MICRONS_AT_1X = 10.0
#: Longest side a level may claim: 2^20 px is 26 cm at 0.25 µm/px, over three times a glass slide.
MAX_SIDE = 1 << 20
#: Largest tile (or associated image) a slide may claim, decoded: 256 MiB, a 8192² tile.
MAX_TILE_BYTES = 256 << 20
#: DICOM transfer syntaxes of JPEG frames (baseline, extended): YCbCr unless their markers say RGB.
JPEG_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


@dataclass(frozen=True)
class SlideInfo:
    """What a slide is: geometry, resolution and metadata. Immutable, safe to pass between threads."""

    path: str
    vendor: str | None
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    objective_power: float | None
    properties: Mapping[str, str] = field(default_factory=dict, compare=False)
    associated_images: tuple[str, ...] = ()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def has_mpp(self) -> bool:
        return self.mpp is not None

    @property
    def base_magnification(self) -> float | None:
        """Magnification of level 0: the scanner's objective power, else estimated from mpp."""
        if self.objective_power:
            return self.objective_power
        if self.mpp:
            return MICRONS_AT_1X / self.mpp[0]
        return None

    def best_level_for_downsample(self, downsample: float) -> int:
        return best_level_for_downsample(self.level_downsamples, downsample)

    def tile_grid(self, tile_size: int = 512) -> TileGrid:
        return TileGrid(self.path, self.level_dimensions, self.level_downsamples, tile_size)


@runtime_checkable
class SlideSource(Protocol):
    """A readable whole-slide image. Implementations are safe to read from several threads."""

    info: SlideInfo

    def read_argb(self, request: RegionRequest) -> np.ndarray: ...

    def read_rgb(self, request: RegionRequest) -> np.ndarray: ...

    def associated_image(self, name: str) -> np.ndarray: ...

    def close(self) -> None: ...


def resolve_slide_path(path: str | Path) -> Path:
    """The file OpenSlide should open for ``path``; a folder must hold a DICOM slide (any .dcm).

    Only regular files get through (:func:`check_slide_files`): OpenSlide would block forever
    opening a FIFO, and a device or a socket is never a slide."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SlideError(f"{p}: no such file")
    if p.is_dir():
        dcm = _dicom_files(p)
        if not dcm:
            raise SlideError(f"{p}: is a folder with no DICOM (.dcm) files; open a slide file instead")
        p = dcm[0]
    check_slide_files(p)
    return p


def _dicom_files(folder: Path) -> list[Path]:
    """The folder's .dcm files (regular files, links followed; not dangling links)."""
    return [f for f in sorted(folder.glob("*.dcm")) or sorted(folder.glob("*.DCM")) if f.is_file()]


def check_slide_files(file: Path) -> None:
    """Refuse, before OpenSlide opens anything, a slide that is not a regular file, or whose folder
    OpenSlide would scan (DICOM: every file beside it; MIRAX: the .mrxs file's data folder) holding
    something that is not (a FIFO there would block OpenSlide as surely): :class:`SlideError`."""
    from engine.errors import FileProblem
    from engine.files import regular_file

    try:
        regular_file(file, "slides")
    except FileProblem as exc:
        raise SlideError(str(exc)) from None
    folder: Path | None = None
    if file.suffix.lower() == ".mrxs":
        folder = file.with_suffix("")
    elif file.suffix.lower() == ".dcm" or _head(file)[128:132] == b"DICM":
        folder = file.parent
    if folder is None or not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if entry == file or entry.is_dir() or not entry.exists():  # (dangling links are skipped)
            continue
        try:
            regular_file(entry, "slides")
        except FileProblem as exc:
            detail = str(exc).split(": ", 1)[-1].rstrip(".")
            raise SlideError(f"{file}: OpenSlide reads every file in {folder}, and {entry.name} "
                             f"there {detail}; move it out of that folder") from None


def _head(file: Path, n: int = 132) -> bytes:
    try:
        with open(file, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _unsupported_message(file: Path) -> str:
    """Why OpenSlide refused ``file``, told apart by the file's first bytes."""
    try:
        with open(file, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        return f"{file}: cannot be read ({exc.strerror or exc})"
    if not head:
        return f"{file}: the file is empty"
    if head[:4] in _TIFF_MAGICS or head[128:132] == b"DICM":
        kind = "DICOM" if head[128:132] == b"DICM" else "TIFF"
        return (f"{file}: a {kind} file that OpenSlide cannot read as a slide: it is truncated or "
                f"corrupt, or an image that is not a tiled whole-slide pyramid")
    return (f"{file}: not a slide in any format OpenSlide reads "
            "(SVS, NDPI, MRXS, SCN, BIF, Philips TIFF, tiled TIFF, DICOM, …)")


def _detail(exc: BaseException, limit: int = 300) -> str:
    """OpenSlide's (libtiff's, libjpeg's) reason on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()).rstrip(".")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _parse_int(value: str | None) -> int:
    """A non-negative integer property, 0 when missing or not a number."""
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


def _parse_float(value: str | None) -> float | None:
    try:
        f = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return f if f is not None and f > 0 and np.isfinite(f) else None


class OpenSlideSource:
    """A slide read through OpenSlide (thread-safe: OpenSlide's C library locks internally)."""

    def __init__(self, path: str | Path) -> None:
        import openslide  # deferred: the library loads only when a slide is opened

        self._openslide = openslide
        file = resolve_slide_path(path).resolve()
        try:
            self._slide = openslide.OpenSlide(str(file))
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideError(_unsupported_message(file)) from None
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{file}: the slide is corrupt or truncated ({_detail(exc)})") from None
        except OSError as exc:
            raise SlideError(f"{file}: cannot be read ({exc.strerror or exc})") from None
        self._closed = False
        self._readers = 0  # reads in flight: close() waits for them (OpenSlide aborts otherwise)
        self._idle = threading.Condition()
        self._ycbcr = False  # OpenSlide hands back YCbCr: converted after every read
        try:
            self.info = self._read_info(file)
            self._ycbcr = self._returns_ycbcr()
            if self._ycbcr:
                log.info("%s: its JPEG frames are YCbCr though its header says RGB; converted", file)
            if self.info.mpp is None:
                log.info("%s has no microns-per-pixel: physical units are unavailable", file)
            self._check_readable()
        except BaseException:
            self._closed = True
            self._slide.close()
            raise

    def _read_info(self, file: Path) -> SlideInfo:
        """The slide's geometry and metadata, refused (:class:`SlideError`) where they could not be
        a real slide's: OpenSlide would abort the whole process allocating a tile or an associated
        image of the size a corrupt header claims."""
        openslide = self._openslide
        props = {}
        for name in list(self._slide.properties):
            try:
                props[name] = self._slide.properties[name]
            except (KeyError, UnicodeError):  # a name or value in no known encoding: left out
                continue
        dims = tuple(tuple(map(int, d)) for d in self._slide.level_dimensions)
        for level, (w, h) in enumerate(dims):
            if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
                raise SlideError(f"{file}: level {level} claims {w} × {h} px, beyond any glass "
                                 f"slide (at most {MAX_SIDE} px a side); the file is corrupt")
            tw = _parse_int(props.get(f"openslide.level[{level}].tile-width"))
            th = _parse_int(props.get(f"openslide.level[{level}].tile-height"))
            if tw * th * 4 > MAX_TILE_BYTES:
                raise SlideError(f"{file}: level {level} claims tiles of {tw} × {th} px, far beyond "
                                 "any slide's; the file is corrupt")
        associated = []
        for name in sorted(self._slide.associated_images.keys()):
            aw = _parse_int(props.get(f"openslide.associated.{name}.width"))
            ah = _parse_int(props.get(f"openslide.associated.{name}.height"))
            if aw * ah * 4 > MAX_TILE_BYTES:  # never read: OpenSlide allocates it whole
                log.warning("%s: its %s image claims %d × %d px; left out as corrupt", file, name,
                            aw, ah)
                continue
            associated.append(name)
        mpp_x = _parse_float(props.get(openslide.PROPERTY_NAME_MPP_X))
        mpp_y = _parse_float(props.get(openslide.PROPERTY_NAME_MPP_Y))
        mpp = (mpp_x, mpp_y or mpp_x) if mpp_x else None
        return SlideInfo(
            path=str(file),
            vendor=props.get(openslide.PROPERTY_NAME_VENDOR),
            level_dimensions=dims,
            level_downsamples=tuple(float(d) for d in self._slide.level_downsamples),
            mpp=mpp,
            objective_power=_parse_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
            properties=MappingProxyType(props),
            associated_images=tuple(associated),
        )

    def _returns_ycbcr(self) -> bool:
        """A DICOM slide whose header says ``PhotometricInterpretation`` RGB over JPEG frames that are
        in fact YCbCr (Bio-Formats' ``bfconvert`` writes such files, as did the converter of the
        test data's CMU-1): OpenSlide ≥ 4.0 trusts the header and returns the YCbCr samples as they
        are, so glass shows salmon and tissue green. Decided from the header *and* the pixels: the
        brightest of a coarse read (the glass) sit at Cb ≈ Cr ≈ 128, where real RGB glass is white.
        A slide without glass, or an OpenSlide that converts, is left as it reads."""
        props = self.info.properties
        if (self.info.vendor != "dicom" or props.get("dicom.PhotometricInterpretation") != "RGB"
                or props.get("dicom.TransferSyntaxUID") not in JPEG_TRANSFER_SYNTAXES):
            return False
        # the coarsest level with some size (a DICOM pyramid may go down to 1 × 1 px)
        lvl = max([i for i, (w, h) in enumerate(self.info.level_dimensions) if min(w, h) >= 128] or [0])
        w, h = self.info.level_dimensions[lvl]
        argb = self.read_argb(RegionRequest(self.info.path, lvl, 0, 0, min(w, 512), min(h, 512)))
        b = argb.view(np.uint8).reshape(*argb.shape, 4)
        opaque = b[..., 3] == 255
        first, second, third = b[..., 2][opaque], b[..., 1][opaque], b[..., 0][opaque]
        bright = first >= 200  # glass: Y of YCbCr, or R of RGB
        if bright.sum() < max(16, 0.01 * opaque.sum()):
            return False
        return bool(abs(np.median(second[bright]) - 128) < 16 and abs(np.median(third[bright]) - 128) < 16)

    # -- reading ---------------------------------------------------------------------------------

    def _check_readable(self) -> None:
        """Read one small region of the coarsest level, so a broken file fails at open, clearly."""
        lvl = self.info.level_count - 1
        w, h = self.info.level_dimensions[lvl]
        self.read_argb(RegionRequest(self.info.path, lvl, 0, 0, max(1, min(w, 64)), max(1, min(h, 64))))

    def read_argb(self, request: RegionRequest) -> np.ndarray:
        """Pixels of ``request`` as a (h, w) uint32 array of premultiplied ARGB (OpenSlide's form)."""
        if request.level >= self.info.level_count:
            raise SlideError(f"{self.info.path}: has no level {request.level} "
                             f"(levels 0–{self.info.level_count - 1})")
        with self._reading():
            return self._read_argb_open(request)

    def read_argb_rows(self, level: int, x: int, ys: list[int], width: int) -> np.ndarray:
        """Rows of ``width`` pixels of ``level`` from level-0 ``x``, one per level-0 ``y`` in
        ``ys``, as a (len(ys), width) ARGB array: many one-row reads at the cost of one."""
        if level >= self.info.level_count:
            raise SlideError(f"{self.info.path}: has no level {level} "
                             f"(levels 0–{self.info.level_count - 1})")
        out = np.empty((len(ys), width), dtype=np.uint32)
        with self._reading():
            for k, y in enumerate(ys):
                self._read_argb_open(RegionRequest(self.info.path, level, x, y, width, 1), out[k])
        return out

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Count one read in flight, so that ``close`` waits for it."""
        with self._idle:
            if self._closed:
                raise SlideError(f"{self.info.path}: the slide was closed")
            self._readers += 1
        try:
            yield
        finally:
            with self._idle:
                self._readers -= 1
                if self._readers == 0:
                    self._idle.notify_all()

    def _read_argb_open(self, request: RegionRequest, buf: np.ndarray | None = None) -> np.ndarray:
        if buf is None:
            buf = np.empty((request.height, request.width), dtype=np.uint32)
        lowlevel = self._openslide.lowlevel
        try:
            lowlevel._read_region(  # the public API would convert to PIL RGBA and back; skip that
                self._slide._osr,
                buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                request.x, request.y, request.level, request.width, request.height,
            )
        except self._openslide.OpenSlideError as exc:
            raise SlideError(f"{self.info.path}: the slide is corrupt or truncated; reading level "
                             f"{request.level} at ({request.x}, {request.y}) failed ({_detail(exc)})") from None
        except AttributeError:  # a future openslide-python without the private entry point
            buf[...] = self._read_argb_public(request).reshape(buf.shape)
        if self._ycbcr:
            ycbcr_argb_to_rgb(buf)
        return buf

    def _read_argb_public(self, request: RegionRequest) -> np.ndarray:
        img = self._slide.read_region((request.x, request.y), request.level,
                                      (request.width, request.height))
        rgba = np.asarray(img, dtype=np.uint32)
        a = rgba[..., 3]
        premul = (rgba[..., :3] * a[..., None] + 127) // 255
        return (a << 24) | (premul[..., 0] << 16) | (premul[..., 1] << 8) | premul[..., 2]

    def read_rgb(self, request: RegionRequest) -> np.ndarray:
        """Pixels of ``request`` as (h, w, 3) uint8 RGB, transparent areas composited on white."""
        return argb_to_rgb(self.read_argb(request))

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (label, macro, thumbnail, …) as (h, w, 3) uint8 RGB on white."""
        if name not in self.info.associated_images:
            raise SlideError(f"{self.info.path}: has no associated image {name!r} "
                             f"(it has: {', '.join(self.info.associated_images) or 'none'})")
        with self._reading():
            try:
                image = self._slide.associated_images[name].convert("RGBA")
            except self._openslide.OpenSlideError as exc:
                raise SlideError(f"{self.info.path}: the {name} image cannot be read; the slide is "
                                 f"corrupt or truncated ({_detail(exc)})") from None
        rgba = np.asarray(image)
        a = rgba[..., 3:4].astype(np.uint16)
        return ((rgba[..., :3] * a + 255 * (255 - a)) // 255).astype(np.uint8)

    def thumbnail(self, max_size: int = 512) -> np.ndarray:
        """The whole slide as (h, w, 3) RGB fitting ``max_size``, from the best level for it."""
        from PIL import Image

        from engine.slide.reduced import read_reduced  # (it imports this module)

        w0, h0 = self.info.dimensions
        ds = max(w0, h0) / max_size
        level = self.info.best_level_for_downsample(max(ds, 1.0))
        lw, lh = self.info.level_dimensions[level]
        scale = max(lw, lh) / max_size
        # averaged down by a whole factor in bounded pieces (never the level whole in memory),
        # then resized to fit exactly
        step = max(1, int(scale))
        rgb = read_reduced(self, level, 0, 0, lw, lh, step)
        lw, lh = rgb.shape[1], rgb.shape[0]
        scale = max(lw, lh) / max_size
        if scale > 1:
            size = (max(1, round(lw / scale)), max(1, round(lh / scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
        return rgb

    def close(self) -> None:
        """Close the slide once reads in flight are done; later reads raise :class:`SlideError`."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
            while self._readers:
                self._idle.wait()
            self._slide.close()

    def __enter__(self) -> "OpenSlideSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ycbcr_argb_to_rgb(argb: np.ndarray) -> None:
    """In place: premultiplied ARGB words whose colour bytes hold Y, Cb, Cr (in R, G, B) become RGB
    (JPEG's full-range BT.601 conversion); transparent words stay as they are. An opaque tile (the
    usual case, on the tile-loading path) goes through Pillow's JPEG colour code (about 2 ms for
    512²); partial alpha is un- and re-premultiplied around the conversion."""
    from PIL import Image

    b = argb.view(np.uint8).reshape(*argb.shape, 4)  # B, G, R, A bytes
    alpha = b[..., 3]
    if bool((alpha == 255).all()):
        h, w = argb.shape
        ycc = Image.frombuffer("RGBA", (w, h), np.ascontiguousarray(argb), "raw", "BGRA", 0, 1).split()[:3]
        rgb = np.asarray(Image.merge("YCbCr", ycc).convert("RGB"))
        b[..., 2], b[..., 1], b[..., 0] = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        return
    a = alpha.astype(np.float32)
    seen = a > 0
    scale = np.where(seen, 255.0 / np.maximum(a, 1.0), 0.0).astype(np.float32)
    y = b[..., 2] * scale
    cb = b[..., 1] * scale - 128.0
    cr = b[..., 0] * scale - 128.0
    back = a / 255.0  # premultiply again
    for channel, value in ((2, y + 1.402 * cr), (1, y - 0.344136 * cb - 0.714136 * cr), (0, y + 1.772 * cb)):
        b[..., channel] = np.where(seen, np.clip(np.rint(value * back), 0, 255), b[..., channel])


def argb_to_rgb(argb: np.ndarray) -> np.ndarray:
    """Premultiplied ARGB words → (h, w, 3) uint8 RGB over a white background."""
    b = argb.view(np.uint8).reshape(*argb.shape, 4)  # little-endian bytes: B, G, R, A
    out = np.empty((*argb.shape, 3), dtype=np.uint8)
    white = 255 - b[..., 3]
    # premultiplied colour + (1 - alpha) · white never exceeds 255
    np.add(b[..., 2], white, out=out[..., 0])
    np.add(b[..., 1], white, out=out[..., 1])
    np.add(b[..., 0], white, out=out[..., 2])
    return out


def open_slide(path: str | Path) -> OpenSlideSource:
    """Open a whole-slide image, raising :class:`SlideError` with one clear sentence if it cannot."""
    return OpenSlideSource(path)
