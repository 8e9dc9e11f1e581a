"""Image input/output: float32 images in [0, 1], shaped (H, W) for gray and (H, W, 3) for colour.

Gray is ITU-R 601 luma, L = 0.299 R + 0.587 G + 0.114 B, which is what the SMoE papers' authors used. For 8-bit
images it is PIL's ``ImageOps.grayscale`` (luma rounded to 8 bits), so their values are the same as in every earlier
version; for 16-bit and float images it is computed in floating point, without rounding.

How :func:`load_image` maps a file's samples to [0, 1]:

- 8-bit images (modes 1, L, P, RGB, RGBA, LA, CMYK, YCbCr, ...) go through PIL's conversions, then / 255.
- Integer samples of more than 8 bits are divided by the largest value of the type the file stores them in:
  16-bit PNG, TIFF and PGM by 65535, unsigned 32-bit TIFF by 2**32 - 1, signed TIFF samples (SampleFormat 2) by
  the largest positive value of their type (32767 for int16), a negative sample being an error. PIL's 32-bit
  mode "I" is read the same way: from a TIFF by its BitsPerSample and SampleFormat tags, from PNG and Netpbm
  (whose samples have at most 16 bits) by 65535, from any other format by the mode's own largest value,
  2**31 - 1. Nothing is rescaled by the values found; an integer image whose largest sample is under 1/256 of its
  type's range (it loads nearly black) gets a warning.
- Float samples (TIFF float16/32/64, PFM, mode "F") are used as they are. A float image with a value outside
  [0, 1], or with NaN or infinity, is refused with a ValueError naming the file and the range found: no scale
  can be told from the file, so rescale or clip it yourself.
- An alpha channel (LA, RGBA, a palette's transparency, a TIFF extra sample) is dropped: colours are used as
  stored, not blended over a background. If any pixel is not fully opaque, a warning names the file.
- EXIF (JPEG, PNG) and TIFF orientation is applied.
- Images of more than :data:`MAX_PIXELS` pixels are refused from their header, before any pixel is decoded.

Every file that cannot be loaded raises a ValueError (FileNotFoundError for a missing one) whose message names it.
16-bit colour PNGs, which PIL decodes to 8 bits, are decoded by PIL twice (high bytes, then low bytes); TIFFs
PIL cannot open or decodes to 8 bits (16-bit colour, float colour, float16/64, signed 8-bit) are read with
``tifffile`` (a dependency of scikit-image).
"""
from __future__ import annotations

import contextlib
import os
import re
import struct
import warnings
import zlib
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 2**26
"""The largest image :func:`load_image` decodes, in pixels (67,108,864, e.g. 8192 x 8192; a float32 colour copy
is 768 MiB). Below PIL's own decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``, 89,478,485)."""

TEST_IMAGES = ("barbara", "flower", "parrot", "peppers")


#: suffixes that mark a string as a path to an image file (not an image key)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm", ".pfm",
                   ".webp", ".gif")
_HASHES: dict[tuple, str] = {}


def image_key(name_or_path) -> str:
    """The key of an image in result tables, model file names and noise seeds.

    - A test image, given by name (any case) or by the path of its file in :func:`data_dir` (or a byte-identical
      copy of it), is keyed by its name: ``"peppers"``; the published tables use these keys.
    - Any other image file is keyed by its file stem and the first 8 hex digits of the SHA-256 of its bytes,
      ``"peppers-1a2b3c4d"``: two different files never share a key, whatever their names, and a user's
      ``peppers.png`` is never taken for the test image.
    - A path that names no file (any more) is keyed by its stem and a hash of its absolute path, so it cannot be
      taken for a test image either.
    - Any other string (a key already, e.g. read back from a table) is returned lower case.
    """
    text = str(name_or_path)
    if text.lower() in TEST_IMAGES:
        return text.lower()
    p = Path(text)
    if p.is_file():
        known = [(name, folder / f"{name}.png") for name in TEST_IMAGES for folder in (data_dir(), PACKAGE_DATA)]
        return identical_file_key(p, known) or f"{p.stem.lower()}-{file_sha256(p)[:8]}"
    if os.sep in text or "/" in text or p.suffix.lower() in _IMAGE_SUFFIXES:
        import hashlib

        where = hashlib.sha256(str(p.absolute()).encode()).hexdigest()[:8]
        return f"{p.stem.lower()}-{where}"
    return text.lower()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def identical_file_key(path, candidates) -> str | None:
    """The key of the first ``(key, file)`` of ``candidates`` that is ``path`` itself or holds the same bytes
    (SHA-256; files of another size are skipped unread); None if none does."""
    path = Path(path)
    size = path.stat().st_size
    for key, candidate in candidates:
        candidate = Path(candidate)
        if not candidate.is_file():
            continue
        if _same_file(path, candidate):
            return key
        if candidate.stat().st_size == size and file_sha256(candidate) == file_sha256(path):
            return key
    return None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), cached by path, size and modification time."""
    import hashlib

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


#: The package's own data (the four test images, their sources in README.md, and the published tables in
#: paper_tables/): package data of ``smoe_core``, so it is found the same way from a checkout, an editable
#: install and a regular ``pip install .``.
PACKAGE_DATA = Path(__file__).resolve().parent / "data"


def data_dir() -> Path:
    """The folder of the test images: ``$SMOE_DATA_DIR`` if set, else the package's ``smoe_core/data``."""
    env = os.environ.get("SMOE_DATA_DIR")
    return Path(env) if env else PACKAGE_DATA


def paper_tables_dir() -> Path:
    """The published tables (CSV, one per paper table), shipped in ``smoe_core/data/paper_tables``."""
    return PACKAGE_DATA / "paper_tables"


def resolve_image_path(name_or_path) -> Path:
    """A test image's name ("peppers") or a path to an image file."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = str(name_or_path).lower()
    if name in TEST_IMAGES or (data_dir() / f"{name}.png").is_file():
        candidate = data_dir() / f"{name}.png"
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"test image {name!r} is missing from {data_dir()}")
    raise FileNotFoundError(f"no such image file: {name_or_path} (test images: {', '.join(TEST_IMAGES)})")


def load_image(name_or_path, color: bool = False) -> np.ndarray:
    """Loads an image as float32 in [0, 1]: (H, W) ITU-R 601 luma, or (H, W, 3) RGB with ``color=True``.

    The module docstring gives the rules for 16-bit, 32-bit, float, alpha and CMYK images. Raises
    FileNotFoundError for a missing file and ValueError, naming the file, for one that cannot be loaded (not an
    image, truncated, float values outside [0, 1], or more than :data:`MAX_PIXELS` pixels).
    """
    path = resolve_image_path(name_or_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _read(path, color)
    except _Refused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(path, _header_size(path), exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ValueError(f"cannot read {path} as an image ({exc})") from exc


class _Refused(ValueError):
    """A file load_image refuses, with a message that names it (not wrapped again)."""


class _Undecodable(_Refused):
    """A TIFF that tifffile cannot decode (PIL's 8-bit decode may still do)."""


_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # PIL modes of more than 8 bits per sample
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG16_LOW = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}  # rawmode giving the low bytes


class _Samples(NamedTuple):
    """An image's samples as stored, before scaling: what :func:`_finish` needs to map them to [0, 1]."""
    data: np.ndarray  # (H, W, S)
    kind: str  # "gray", "rgb" or "cmyk": the first 1, 3 or 4 samples; a sample after them is alpha
    top: int | None  # the largest value of the stored integer type; None for float samples
    what: str  # the stored type, for messages ("16-bit unsigned")
    orientation: int = 1  # EXIF / TIFF orientation, 1 to 8
    inverted: bool = False  # TIFF MinIsWhite


def _read(path: Path, color: bool) -> np.ndarray:
    # PIL is given a file object, not the path, so that it never memory-maps the file: PIL 13 maps an uncompressed
    # TIFF whose orientation swaps width and height (5 to 8) with the swapped size, which scrambles its pixels.
    with open(path, "rb") as fp:
        try:
            im = Image.open(fp)
        except UnidentifiedImageError:
            if _is_tiff(path):  # float16/64 and float colour TIFFs, which PIL does not open
                return _finish(_tifffile_samples(path), color, path)
            raise _Refused(f"cannot read {path} as an image (not a format PIL can identify)") from None
        with im:
            _check_size(path, *im.size)
            samples = None
            if im.format == "TIFF" and _tiff_is_deep(im):
                samples = _tiff_samples(im, path)  # None: only PIL's 8-bit decode is available
            elif im.format == "PNG" and len(im.tile) == 1 and im.tile[0][0] == "zip" and im.tile[0][3] in _PNG16_LOW:
                samples = _png16_samples(im, path)
            elif im.mode in _DEEP_MODES:
                samples = _pil_samples(im)
            if samples is None:
                return _read_8bit(im, path, color)
    return _finish(samples, color, path)


def _read_8bit(im, path: Path, color: bool) -> np.ndarray:
    """The 8-bit path of earlier versions (PIL's conversions to RGB and to 8-bit luma), with the same values; only
    uncompressed TIFFs of orientation 5 to 8 differ, which PIL's memory map used to scramble (see _read)."""
    im.load()
    im = ImageOps.exif_transpose(im)
    alpha = _alpha_8bit(im)
    if alpha is not None and alpha.getextrema()[0] < 255:
        _warn_transparent(path)
    if color:
        arr = np.asarray(im.convert("RGB"))
    else:
        arr = np.asarray(ImageOps.grayscale(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
    return (arr.astype(np.float32) / 255.0)


def _alpha_8bit(im):
    """The alpha band of an 8-bit image (its own, or from a palette's or colour key's transparency), or None."""
    bands = im.getbands()
    for name in ("A", "a"):
        if name in bands:
            return im.getchannel(bands.index(name))
    if "transparency" in im.info and im.mode in ("P", "L", "RGB"):
        return im.convert("RGBA").getchannel("A")
    return None


def _pil_samples(im) -> _Samples:
    """PIL's 16-bit, 32-bit integer and float modes (not TIFF, which carries its own sample type)."""
    im.load()
    data = np.asarray(im)[..., None]
    orientation = im.getexif().get(0x0112, 1)
    if im.mode == "F":
        return _Samples(data, "gray", None, "float", orientation)
    if im.mode.startswith("I;16") or im.format in ("PNG", "PPM"):  # PIL widens 16-bit PNG / PGM samples to "I"
        return _Samples(data, "gray", 65535, "16-bit unsigned", orientation)
    return _Samples(data, "gray", 2**31 - 1, "32-bit signed", orientation)


def _tiff_tag(im, tag: int, default: int) -> int:
    value = im.tag_v2.get(tag, default)
    return int(value[0] if isinstance(value, tuple) else value)


def _tiff_is_deep(im) -> bool:
    bits = im.tag_v2.get(258, (1,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    return max(bits) > 8 or _tiff_tag(im, 339, 1) != 1


def _tiff_samples(im, path: Path) -> _Samples | None:
    """A TIFF of more than 8 bits per sample, or of signed / float samples."""
    bits, fmt = _tiff_tag(im, 258, 1), _tiff_tag(im, 339, 1)
    if _tiff_tag(im, 277, 1) == 1 and im.mode in _DEEP_MODES and bits in (16, 32) and fmt in (1, 2, 3):
        im.load()  # gray: PIL decodes every compression (tifffile needs imagecodecs for LZW)
        data = np.asarray(im)
        data = data.astype(data.dtype.newbyteorder("="), copy=False)
        stored = np.dtype(f"{'uif'[fmt - 1]}{bits // 8}")
        if data.dtype.itemsize == stored.itemsize and data.dtype != stored:
            data = data.view(stored)  # unsigned 32-bit samples, which PIL holds as signed
        top = None if stored.kind == "f" else int(np.iinfo(stored).max)
        orientation = im.getexif().get(0x0112, 1)  # after load: PIL >= 11 applies it itself, then drops the tag
        return _Samples(data[..., None], "gray", top, _describe(stored), orientation,
                        inverted=_tiff_tag(im, 262, 1) == 0)
    try:
        return _tifffile_samples(path)
    except _Undecodable as exc:
        if fmt != 1 or im.mode not in ("L", "LA", "RGB", "RGBA", "CMYK"):
            raise
        warnings.warn(f"{path}: read at 8-bit precision, as tifffile cannot decode it ({exc.__cause__})",
                      stacklevel=2)
        return None


def _tifffile_samples(path: Path) -> _Samples:
    try:
        import tifffile
    except ImportError:
        raise _Refused(f"cannot read {path}: PIL cannot decode it faithfully and tifffile is not installed") from None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            _check_size(path, page.imagewidth, page.imagelength)
            data, axes, shape = page.asarray(), page.axes, page.shape
            photometric = int(page.photometric)
            tag = page.tags.get(274)
            orientation = int(tag.value) if tag is not None else 1
    except _Refused:
        raise
    except Exception as exc:  # tifffile's many ways to fail on a file (a codec it lacks, ...)
        raise _Undecodable(f"cannot read {path} as an image (tifffile: {exc})") from exc
    if "S" in axes:
        data, axes = np.moveaxis(data, axes.index("S"), -1), axes.replace("S", "") + "S"
    else:
        data, axes = data[..., None], axes + "S"
    if axes[-3:] != "YXS" or np.prod(data.shape[:-3], dtype=np.int64) != 1:
        raise _Refused(f"cannot read {path}: a TIFF laid out as {axes} {shape} is not a 2-D image")
    data = data.reshape(data.shape[-3:])
    kinds = {0: "gray", 1: "gray", 2: "rgb", 5: "cmyk"}  # MinIsWhite, MinIsBlack, RGB, Separated (CMYK)
    if photometric not in kinds or (photometric == 5 and data.shape[2] < 4):
        raise _Refused(f"cannot read {path}: TIFF photometric interpretation {photometric} with "
                       f"{data.shape[2]} {_describe(data.dtype)} samples is not supported")
    if data.dtype == bool:
        data = data.astype(np.uint8)
        return _Samples(data, kinds[photometric], 1, "1-bit", orientation, photometric == 0)
    if data.dtype.kind not in "uif":
        raise _Refused(f"cannot read {path}: {data.dtype} TIFF samples are not supported")
    top = None if data.dtype.kind == "f" else int(np.iinfo(data.dtype).max)
    return _Samples(data, kinds[photometric], top, _describe(data.dtype), orientation, photometric == 0)


def _png16_samples(im, path: Path) -> _Samples | None:
    """A 16-bit colour or gray+alpha PNG, which PIL decodes to 8 bits: decoded for the high bytes, then again with
    a rawmode that gives the low bytes (PNG stores samples big-endian; unfiltering depends only on the bit count)."""
    if not _png16_trick_works():
        warnings.warn(f"{path}: read at 8-bit precision (this PIL version defeats the 16-bit colour PNG decode)",
                      stacklevel=2)
        return None
    tile = im.tile[0]
    rawmode = tile[3]
    orientation = _decode_low(im, tile, _PNG16_LOW[rawmode])
    low = np.asarray(im).astype(np.uint16)
    if rawmode == "LA;16B":  # decoded as RGBA bytes: gray high, gray low, alpha high, alpha low
        return _Samples((low[..., 0::2] << 8) | low[..., 1::2], "gray", 65535, "16-bit unsigned", orientation)
    with open(path, "rb") as fp, Image.open(fp) as high:
        high.load()
        data = (np.asarray(high).astype(np.uint16) << 8) | low
    return _Samples(data, "rgb", 65535, "16-bit unsigned", orientation)


def _decode_low(im, tile, rawmode: str) -> int:
    """Decodes `im` (a 16-bit PNG, not loaded) with `rawmode`; returns its EXIF orientation."""
    im.tile = [tile._replace(args=rawmode)]
    im.load()
    return im.getexif().get(0x0112, 1)


@lru_cache(maxsize=1)
def _png16_trick_works() -> bool:
    """Whether the installed PIL decodes a 1 x 1 16-bit RGB PNG to its true values with the two decodes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00\x01\x02\x03\x04\x05\x06")) + chunk(b"IEND", b""))
    try:
        with Image.open(BytesIO(png)) as low, Image.open(BytesIO(png)) as high:
            tile = low.tile[0]
            if tile[3] != "RGB;16B":
                return False
            _decode_low(low, tile, _PNG16_LOW["RGB;16B"])
            value = (np.asarray(high).astype(np.uint16) << 8) | np.asarray(low)
        return value.tolist() == [[[0x0102, 0x0304, 0x0506]]]
    except Exception:  # noqa: BLE001 - any failure means: do not use it
        return False


def _finish(s: _Samples, color: bool, path: Path) -> np.ndarray:
    """Maps stored samples to float32 in [0, 1] (module docstring), orients them and makes gray or colour."""
    n = {"gray": 1, "rgb": 3, "cmyk": 4}[s.kind]
    if s.data.size == 0:
        raise _Refused(f"{path} is an empty image")
    if s.data.shape[2] < n:
        raise _Refused(f"cannot read {path}: {s.data.shape[2]} samples per pixel for a {s.kind} image")
    col = s.data[..., :n]
    if s.top is None:
        col = col.astype(np.float64)
        if not np.isfinite(col).all():
            raise _Refused(f"{path} holds NaN or infinite float values; a float image must lie in [0, 1]")
        lo, hi = col.min(), col.max()
        if lo < 0 or hi > 1:
            raise _Refused(f"{path} holds float values from {lo:.6g} to {hi:.6g}; a float image must lie in [0, 1] "
                           "(float samples are used as stored: rescale or clip the file)")
    else:
        lo, hi = int(col.min()), int(col.max())
        if lo < 0 or hi > s.top:
            raise _Refused(f"{path} holds {s.what} samples from {lo} to {hi}, outside 0 to {s.top}")
        if hi * 256 < s.top:
            warnings.warn(f"{path}: its largest sample is {hi} of {s.top} ({s.what}), so it loads nearly black",
                          stacklevel=2)
        col = col / float(s.top)
    if s.inverted:
        col = 1.0 - col
    if s.kind == "cmyk":  # as PIL's CMYK -> RGB: (1 - C) (1 - K)
        col = (1.0 - col[..., :3]) * (1.0 - col[..., 3:])
    if s.data.shape[2] > n and (s.data[..., n] < (1.0 if s.top is None else s.top)).any():
        _warn_transparent(path)
    col = _orient(col, s.orientation)
    if color:
        out = col if col.shape[2] == 3 else np.repeat(col, 3, axis=2)
    else:
        out = col[..., 0] if col.shape[2] == 1 else 0.299 * col[..., 0] + 0.587 * col[..., 1] + 0.114 * col[..., 2]
    return np.ascontiguousarray(out, dtype=np.float32)


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Applies an EXIF / TIFF orientation (1 to 8) to an (H, W, ...) array, as PIL's ``ImageOps.exif_transpose``."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def _describe(dtype) -> str:
    dtype = np.dtype(dtype)
    kind = {"u": "unsigned", "i": "signed", "f": "float"}.get(dtype.kind, str(dtype))
    return f"{8 * dtype.itemsize}-bit {kind}"


def _warn_transparent(path: Path) -> None:
    warnings.warn(f"{path} has transparent pixels: its alpha channel is dropped (colours are used as stored, "
                  "not blended over a background)", stacklevel=3)


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _check_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise _too_large(path, (width, height))


def _too_large(path: Path, size, exc=None) -> ValueError:
    if size is not None:
        what = f"{size[0]} x {size[1]} pixels"
    else:  # PIL refused it before telling its size; its message holds the pixel count
        found = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"{found.group(1)} pixels" if found else "too many pixels"
    return _Refused(f"{path} is too large to load: {what}, more than the limit of {MAX_PIXELS} "
                    "(smoe_core.io.MAX_PIXELS)")


def _header_size(path: Path):
    """(width, height) from an image's header, read as ``Image.open`` does but without its size check; or None."""
    try:
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                found = accept(prefix) if accept is not None else True
                if not found or isinstance(found, str):  # a str is PIL's note on a near miss
                    continue
                fp.seek(0)
                with contextlib.suppress(Exception):  # not this format (or its plugin checks the size itself)
                    return tuple(factory(fp, str(path)).size)
    except OSError:
        pass
    return None


#: The values a float image given to a fit or an initializer may take: [0, 1] with room for the noise of a noisy
#: image (``smoe denoise`` fits the unclipped noisy image). Beyond it the image is almost surely on another scale
#: (0-255), which fits to a meaningless model; :func:`check_image` refuses it with ``bounded=True``.
IMAGE_RANGE = (-3.0, 4.0)


def check_image(image, *, name: str = "image", bounded: bool = False) -> np.ndarray:
    """Validates an image shaped (H, W) or (H, W, C), C <= 4; returns it as float32.

    Integer images are converted as scikit-image's ``img_as_float`` does for unsigned types: unsigned
    integers are divided by their type's largest value (uint8 by 255, uint16 by 65535) and booleans map to
    0 and 1; a signed integer image is refused (its scale cannot be told). Float images are used as they are:
    finite values, and with ``bounded=True`` (fits and initializers) within :data:`IMAGE_RANGE`. ``name`` is
    the argument named in the messages.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and not 1 <= arr.shape[2] <= 4) or min(arr.shape[:2]) < 1:
        raise ValueError(f"{name} must be shaped (H, W) or (H, W, C) with C <= 4, got {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if arr.dtype.kind == "u":
        return (arr.astype(np.float64) / np.iinfo(arr.dtype).max).astype(np.float32)
    if arr.dtype.kind == "i":
        raise ValueError(f"{name} has the signed integer type {arr.dtype}: give floats in [0, 1] or an unsigned "
                         "integer image (uint8, uint16), which is scaled by its type's range")
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if bounded:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < IMAGE_RANGE[0] or hi > IMAGE_RANGE[1]:
            raise ValueError(f"{name} values range over [{lo:g}, {hi:g}], far outside [0, 1]: divide a 0-255 "
                             "image by 255 (a uint8 array is scaled to [0, 1] by itself)")
    return arr


def save_image(path, image, bits: int = 8) -> Path:
    """Writes a [0, 1] float image (clipped, rounded) with 8 bits per sample, or with ``bits=16`` as a 16-bit gray
    PNG or TIFF (x 65535; what :func:`load_image` reads back to within 0.5 / 65535); atomic (temporary file, then
    rename)."""
    path = Path(path)
    arr = check_image(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    fmt = (path.suffix.lstrip(".") or "png").upper()
    fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt, fmt)
    if bits == 8:
        pil = Image.fromarray(np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8))
    elif bits == 16:
        if arr.ndim != 2 or fmt not in ("PNG", "TIFF"):
            raise ValueError(f"16-bit output is written for gray PNG or TIFF files, not {path.name} "
                             f"({'colour' if arr.ndim == 3 else fmt})")
        pil = Image.fromarray(np.clip(np.round(arr * 65535.0), 0, 65535).astype(np.uint16))
    else:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    tmp = path.with_name(f".{path.name}.tmp")
    pil.save(tmp, format=fmt)
    tmp.replace(path)
    return path


def bit_depth(name_or_path) -> int:
    """8 if the image file stores at most 8 bits per sample, else 16 (16-bit or 32-bit integer samples, float
    samples): the depth an image derived from it keeps (``save_image(..., bits=bit_depth(src))``). Read from the
    header, without decoding the pixels; ValueError naming the file when it cannot be opened."""
    path = resolve_image_path(name_or_path)
    if _is_tiff(path):
        try:
            with open(path, "rb") as fp, Image.open(fp) as im:
                return 16 if _tiff_is_deep(im) else 8
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return 16  # float16/64 and float colour TIFFs, which PIL does not open
    try:
        with open(path, "rb") as fp, Image.open(fp) as im:
            if im.mode in _DEEP_MODES:
                return 16
            if im.format == "PNG" and len(im.tile) == 1 and im.tile[0][3] in _PNG16_LOW:
                return 16
            return 8
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as an image ({exc})") from exc


def atomic_write(path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` through a temporary file in its folder (fsynced, then renamed): a reader never
    sees a half-written file, and an interrupted write leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
