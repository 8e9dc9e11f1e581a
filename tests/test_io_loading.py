"""load_image on every kind of image file: bit depths (8, 16, 32, float), palette, alpha, CMYK, 1-bit, orientation,
and the size bound. Files are made here with PIL, tifffile or a small PNG writer, with known pixel values."""
from __future__ import annotations

import math
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from smoe_core import io as smoe_io
from smoe_core.io import load_image

tifffile = pytest.importorskip("tifffile")

ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _filtered_rows(rows: np.ndarray, bpp: int) -> bytes:
    """PNG scanlines of `rows` (h, bytes per row), cycling through filter types 0-4 (None, Sub, Up, Average, Paeth)."""
    x = rows.astype(np.int32)
    up = np.vstack([np.zeros_like(x[:1]), x[:-1]])
    left = np.pad(x, ((0, 0), (bpp, 0)))[:, :-bpp]
    upleft = np.pad(up, ((0, 0), (bpp, 0)))[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    predictions = (0 * x, left, up, (left + up) // 2, paeth)
    out = b""
    for y in range(x.shape[0]):
        kind = y % 5
        out += bytes([kind]) + ((x[y] - predictions[kind][y]) % 256).astype(np.uint8).tobytes()
    return out


def write_png(path, arr: np.ndarray, interlace: bool = False, orientation: int | None = None):
    """A PNG of `arr` (uint8 or uint16; (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) RGB, (H, W, 4) RGBA), its rows
    filtered with every filter type: PIL writes no 16-bit colour PNG."""
    arr = arr if arr.ndim == 3 else arr[..., None]
    h, w, c = arr.shape
    depth = 8 * arr.dtype.itemsize
    samples = arr.astype(">u2") if depth == 16 else arr
    bpp = c * depth // 8
    data = b""
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        sub = samples[y0::dy, x0::dx]
        if sub.size:
            data += _filtered_rows(np.frombuffer(sub.tobytes(), np.uint8).reshape(sub.shape[0], -1), bpp)
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace)))
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        png += _chunk(b"eXIf", exif.tobytes()[6:])  # without the "Exif\0\0" prefix
    png += _chunk(b"IDAT", zlib.compress(data)) + _chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def f32(values) -> np.ndarray:
    """The float32 nearest to each exact value (what the loader must give)."""
    return np.asarray(values, np.float64).astype(np.float32)


def luma(rgb) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    return f32(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])


def old_8bit(path, color):
    """load_image's 8-bit path before this change: the results that must not move."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        arr = np.asarray(im.convert("RGB") if color else
                         ImageOps.grayscale(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
    return arr.astype(np.float32) / 255.0


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


RNG = np.random.default_rng(7)
U16 = np.array([[0, 1, 255, 256], [4095, 32768, 65534, 65535], [1234, 40000, 7, 60000]], np.uint16)
RGB16 = RNG.integers(0, 65536, (7, 11, 3)).astype(np.uint16)


# ----------------------------------------------------------------- 16-bit gray
@pytest.mark.parametrize("name, write", [
    ("pil.png", lambda p, a: Image.fromarray(a).save(p)),
    ("pil.tif", lambda p, a: Image.fromarray(a).save(p)),
    ("pil_lzw.tif", lambda p, a: Image.fromarray(a).save(p, compression="tiff_lzw")),
    ("tifffile_le.tif", lambda p, a: tifffile.imwrite(p, a)),
    ("tifffile_be.tif", lambda p, a: tifffile.imwrite(p, a, byteorder=">")),  # PIL mode I;16B
    ("pil.pgm", lambda p, a: Image.fromarray(a).save(p)),  # PIL mode I (32-bit), 16-bit by the format
])
def test_16bit_gray_divides_by_65535(tmp_path, name, write):
    path = tmp_path / name
    write(path, U16)
    gray = no_warnings(load_image, path)
    assert gray.dtype == np.float32 and gray.shape == U16.shape
    np.testing.assert_array_equal(gray, f32(U16 / 65535))
    color = load_image(path, color=True)
    assert color.shape == U16.shape + (3,)
    np.testing.assert_array_equal(color, np.repeat(gray[..., None], 3, axis=2))


def test_issue_repro_16bit_png_is_not_all_ones(tmp_path):
    a = (np.random.default_rng(0).random((64, 64)) * 65535).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert 0.0 <= img.min() < 0.01 and 0.99 < img.max() <= 1.0 and img.std() > 0.2
    np.testing.assert_array_equal(img, f32(a / 65535))


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N"])
def test_every_i16_mode(mode):
    # PIL opens 16-bit files as I;16 or I;16B only; I;16L and I;16N exist in memory, so the helper is fed directly
    raw = U16.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    im = Image.frombytes(mode, U16.shape[::-1], raw)
    samples = smoe_io._pil_samples(im)
    np.testing.assert_array_equal(smoe_io._finish(samples, False, "mem"), f32(U16 / 65535))


# ----------------------------------------------------------------- 16-bit colour
@pytest.mark.parametrize("interlace", [False, True])
def test_png_writer_matches_pil_on_8bit(tmp_path, interlace):
    rgb = RNG.integers(0, 256, (13, 17, 3)).astype(np.uint8)
    write_png(tmp_path / "a.png", rgb, interlace)
    with Image.open(tmp_path / "a.png") as im:
        np.testing.assert_array_equal(np.asarray(im), rgb)  # the test writer is a valid PNG encoder


@pytest.mark.parametrize("interlace", [False, True])
def test_16bit_rgb_png_keeps_16_bits(tmp_path, interlace):
    path = write_png(tmp_path / "rgb16.png", RGB16, interlace)
    color = no_warnings(load_image, path, color=True)
    np.testing.assert_array_equal(color, f32(RGB16 / 65535))
    gray = load_image(path)
    np.testing.assert_allclose(gray, luma(RGB16 / 65535), rtol=0, atol=1e-7)  # float luma, no 8-bit rounding
    assert len(np.unique(np.round(gray * 65535))) > 60  # 77 pixels: not collapsed onto 256 levels


def test_16bit_rgba_and_gray_alpha_png(tmp_path):
    alpha = np.full(RGB16.shape[:2], 65535, np.uint16)
    opaque = write_png(tmp_path / "opaque.png", np.dstack([RGB16, alpha]))
    np.testing.assert_array_equal(no_warnings(load_image, opaque, color=True), f32(RGB16 / 65535))
    alpha[2, 3] = 65534
    path = write_png(tmp_path / "rgba16.png", np.dstack([RGB16, alpha]), interlace=True)
    with pytest.warns(UserWarning, match=re.escape(str(path)) + ".*alpha"):
        color = load_image(path, color=True)
    np.testing.assert_array_equal(color, f32(RGB16 / 65535))
    la = write_png(tmp_path / "la16.png", np.dstack([U16, np.zeros_like(U16)]))
    with pytest.warns(UserWarning, match=re.escape(str(la))):
        np.testing.assert_array_equal(load_image(la), f32(U16 / 65535))


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_16bit_rgb_tiff(tmp_path, planar):
    path = tmp_path / "rgb16.tif"
    data = RGB16 if planar == "contig" else np.moveaxis(RGB16, 2, 0)
    tifffile.imwrite(path, data, photometric="rgb", planarconfig=planar)
    np.testing.assert_array_equal(no_warnings(load_image, path, color=True), f32(RGB16 / 65535))
    np.testing.assert_allclose(load_image(path), luma(RGB16 / 65535), rtol=0, atol=1e-7)


def test_16bit_rgba_tiff_drops_alpha_with_warning(tmp_path):
    path = tmp_path / "rgba16.tif"
    alpha = np.zeros(RGB16.shape[:2], np.uint16)
    tifffile.imwrite(path, np.dstack([RGB16, alpha]), photometric="rgb", extrasamples=["unassalpha"])
    with pytest.warns(UserWarning, match=re.escape(str(path)) + ".*alpha"):
        np.testing.assert_array_equal(load_image(path, color=True), f32(RGB16 / 65535))


def test_16bit_cmyk_tiff(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [65535, 0, 0, 0], [0, 0, 0, 65535], [32768, 0, 65535, 16384]]], np.uint16)
    path = tmp_path / "cmyk16.tif"
    tifffile.imwrite(path, cmyk, photometric="separated")
    c = cmyk / 65535
    expect = (1 - c[..., :3]) * (1 - c[..., 3:])  # as PIL's 8-bit CMYK -> RGB
    np.testing.assert_allclose(load_image(path, color=True), f32(expect), rtol=0, atol=1e-7)


def test_miniswhite_16bit_tiff_is_inverted(tmp_path):
    path = tmp_path / "mw.tif"
    tifffile.imwrite(path, U16, photometric="miniswhite")
    np.testing.assert_allclose(load_image(path), f32(1 - U16 / 65535), rtol=0, atol=1e-7)


# ----------------------------------------------------------------- float
FLOATS = np.array([[0.0, 0.25, 0.5], [1.0, 1e-6, 0.999]])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_tiff_used_as_stored(tmp_path, dtype):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, FLOATS.astype(dtype))  # float32 gray: PIL mode F; float16/64: tifffile
    np.testing.assert_array_equal(no_warnings(load_image, path), FLOATS.astype(dtype).astype(np.float32))


def test_float_rgb_tiff(tmp_path):
    rgb = RNG.random((5, 6, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "rgbf.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(load_image(tmp_path / "rgbf.tif", color=True), rgb)
    np.testing.assert_allclose(load_image(tmp_path / "rgbf.tif"), luma(rgb), rtol=0, atol=1e-7)


@pytest.mark.parametrize("bad, found", [(np.array([[0.0, 1.5]]), "0 to 1.5"), (np.array([[-0.25, 1.0]]), "-0.25 to 1"),
                                        (np.array([[0.2, 255.0]]), "0.2 to 255")])
def test_float_out_of_range_is_an_error(tmp_path, bad, found):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, bad.astype(np.float32))
    with pytest.raises(ValueError, match=re.escape(str(path)) + f".*{re.escape(found)}.*\\[0, 1\\]"):
        load_image(path)


def test_float_nan_is_an_error(tmp_path):
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, np.array([[0.5, np.nan]], np.float32))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*NaN"):
        load_image(path)


# ----------------------------------------------------------------- 32-bit and signed integers
def test_32bit_unsigned_tiff_divides_by_2_32(tmp_path):
    a = np.array([[0, 2**31, 2**32 - 1, 3 * 2**30]], np.uint32)  # PIL holds these as signed: reinterpreted
    tifffile.imwrite(tmp_path / "u32.tif", a)
    np.testing.assert_array_equal(no_warnings(load_image, tmp_path / "u32.tif"), f32(a / (2**32 - 1)))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_signed_tiff_divides_by_the_type_max_and_refuses_negatives(tmp_path, dtype):
    top = np.iinfo(dtype).max
    a = np.array([[0, 1, top // 2, top]], dtype)
    tifffile.imwrite(tmp_path / "s.tif", a)
    np.testing.assert_array_equal(no_warnings(load_image, tmp_path / "s.tif"), f32(a / top))
    tifffile.imwrite(tmp_path / "neg.tif", np.array([[-3, 0, top]], dtype))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "neg.tif")) + ".*from -3 to"):
        load_image(tmp_path / "neg.tif")


def test_dark_32bit_image_warns(tmp_path):
    a = np.array([[0, 10, 1000]], np.int32)
    tifffile.imwrite(tmp_path / "dark.tif", a)
    with pytest.warns(UserWarning, match=re.escape(str(tmp_path / "dark.tif")) + ".*nearly black"):
        img = load_image(tmp_path / "dark.tif")
    np.testing.assert_array_equal(img, f32(a / (2**31 - 1)))


# ----------------------------------------------------------------- 8-bit modes (unchanged values)
RGB8 = RNG.integers(0, 256, (9, 10, 3)).astype(np.uint8)


@pytest.mark.parametrize("mode, ext", [("L", "png"), ("RGB", "png"), ("RGB", "tif"), ("P", "png"), ("P", "gif"),
                                       ("1", "png"), ("1", "tif"), ("CMYK", "tif"), ("CMYK", "jpg"),
                                       ("YCbCr", "jpg"), ("RGB", "bmp")])
def test_8bit_results_are_unchanged(tmp_path, mode, ext):
    path = tmp_path / f"x.{ext}"
    Image.fromarray(RGB8).convert(mode).save(path)
    for color in (False, True):
        img = no_warnings(load_image, path, color=color)
        assert img.dtype == np.float32 and img.shape == RGB8.shape[: 3 if color else 2]
        np.testing.assert_array_equal(img, old_8bit(path, color))


def test_8bit_known_values(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    gray = load_image(tmp_path / "rgb.png")
    # PIL's luma, rounded to 8 bits: round(0.299 * 255) = 76, round(0.587 * 255) = 150, round(0.114 * 255) = 29
    np.testing.assert_array_equal(gray, np.array([[76, 150, 29, 124]], np.float32) / 255)
    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 0, 255, 255, 255, 255])
    p.putdata([0, 1, 2])
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png", color=True),
                                  np.array([[[1, 0, 0], [0, 0, 1], [1, 1, 1]]], np.float32))
    b = Image.new("1", (2, 1))
    b.putpixel((1, 0), 1)
    b.save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_image(tmp_path / "b.png"), np.array([[0, 1]], np.float32))
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(255, 0, 0, 0), (0, 0, 0, 255)])
    cmyk.save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "cmyk.tif", color=True),
                                  np.array([[[0, 1, 1], [0, 0, 0]]], np.float32))


@pytest.mark.parametrize("mode, ext", [("RGBA", "png"), ("RGBA", "tif"), ("LA", "png")])
def test_8bit_alpha_dropped_with_warning_naming_the_file(tmp_path, mode, ext):
    im = Image.fromarray(RGB8).convert(mode)
    path = tmp_path / f"a_{mode}.{ext}"
    bands = list(im.split())
    bands[-1] = Image.new("L", im.size, 255)
    Image.merge(mode, bands).save(tmp_path / f"opaque.{ext}")
    no_warnings(load_image, tmp_path / f"opaque.{ext}")  # fully opaque: nothing is lost, nothing said
    bands[-1] = Image.fromarray(RNG.integers(0, 256, RGB8.shape[:2]).astype(np.uint8))
    Image.merge(mode, bands).save(path)
    with pytest.warns(UserWarning, match=re.escape(str(path)) + ".*alpha"):
        color = load_image(path, color=True)
    np.testing.assert_array_equal(color, old_8bit(path, True))  # colours as stored
    if mode == "RGBA":
        np.testing.assert_array_equal(color, RGB8 / np.float32(255))


def test_palette_transparency_warns(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0])
    p.putdata([0, 1])
    p.save(tmp_path / "t.gif", transparency=0)
    with pytest.warns(UserWarning, match=re.escape(str(tmp_path / "t.gif"))):
        img = load_image(tmp_path / "t.gif", color=True)
    np.testing.assert_array_equal(img, np.array([[[1, 0, 0], [0, 1, 0]]], np.float32))
    p.save(tmp_path / "unused.gif", transparency=5)  # a transparent index no pixel uses
    no_warnings(load_image, tmp_path / "unused.gif")


# ----------------------------------------------------------------- orientation
PIL_METHOD = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _transposed(a: np.ndarray, orientation: int) -> np.ndarray:
    im = Image.fromarray(a)
    return np.asarray(im if orientation == 1 else im.transpose(PIL_METHOD[orientation]))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_as_pil(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(U16).save(tmp_path / "g.png", exif=exif)  # 16-bit gray: PIL mode I;16
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), f32(_transposed(U16, orientation) / 65535))
    tifffile.imwrite(tmp_path / "g.tif", U16, extratags=[(274, "H", 1, orientation, False)])
    np.testing.assert_array_equal(load_image(tmp_path / "g.tif"), f32(_transposed(U16, orientation) / 65535))
    write_png(tmp_path / "c.png", RGB16, orientation=orientation)  # 16-bit colour PNG, eXIf chunk
    expect = np.stack([_transposed(RGB16[..., i], orientation) for i in range(3)], axis=2)
    np.testing.assert_array_equal(load_image(tmp_path / "c.png", color=True), f32(expect / 65535))
    tifffile.imwrite(tmp_path / "c.tif", RGB16, photometric="rgb", extratags=[(274, "H", 1, orientation, False)])
    np.testing.assert_array_equal(load_image(tmp_path / "c.tif", color=True), f32(expect / 65535))
    # an uncompressed 8-bit TIFF: PIL 13 scrambles orientations 5-8 when it memory-maps the file (load_image does not
    # let it), which is the one 8-bit case whose values change
    a8 = (U16 >> 8).astype(np.uint8)
    tifffile.imwrite(tmp_path / "g8.tif", a8, extratags=[(274, "H", 1, orientation, False)])
    expect8 = _transposed(a8, orientation).astype(np.float32) / 255
    np.testing.assert_array_equal(load_image(tmp_path / "g8.tif"), expect8)


def test_exif_rotated_jpeg(tmp_path):
    a = np.full((40, 60), 30, np.uint8)
    a[:10, :10] = 230  # a bright top-left corner, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(a).save(tmp_path / "r.jpg", quality=100, exif=exif)
    img = load_image(tmp_path / "r.jpg")
    assert img.shape == (60, 40)
    assert img[:10, -10:].mean() > 0.8 and img[-10:, :10].mean() < 0.2  # the corner is now top-right
    with Image.open(tmp_path / "r.jpg") as im:
        stored = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(img, np.rot90(stored, -1).astype(np.float32) / 255)


# ----------------------------------------------------------------- size bound and errors
def _png_header(path, width, height):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height", [(100_000, 100_000),  # PIL's DecompressionBombError
                                           (12_000, 10_000),  # PIL's DecompressionBombWarning
                                           (10_000, 7_000)])  # over MAX_PIXELS only
def test_huge_header_is_one_value_error(tmp_path, width, height):
    assert width * height > smoe_io.MAX_PIXELS
    path = _png_header(tmp_path / "bomb.png", width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        with pytest.raises(ValueError, match=re.escape(f"{path} is too large to load: {width} x {height} pixels")) as e:
            load_image(path)
    assert "\n" not in str(e.value)


def test_max_pixels_is_checked_before_decoding(tmp_path, monkeypatch):
    Image.fromarray(U16).save(tmp_path / "g.png")
    tifffile.imwrite(tmp_path / "f64.tif", FLOATS)  # read by tifffile
    monkeypatch.setattr(smoe_io, "MAX_PIXELS", 5)
    for name, size in (("g.png", "4 x 3"), ("f64.tif", "3 x 2")):
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name} is too large to load: {size} pixels")):
            load_image(tmp_path / name)
    monkeypatch.setattr(smoe_io, "MAX_PIXELS", 12)
    assert load_image(tmp_path / "g.png").shape == (3, 4)


def test_too_large_without_a_readable_header_gives_the_pixel_count(tmp_path):
    path = tmp_path / "odd.bin"
    path.write_bytes(b"nothing PIL knows")
    assert smoe_io._header_size(path) is None
    exc = Image.DecompressionBombError("Image size (123456789012 pixels) exceeds limit of 178956970 pixels, ...")
    assert str(smoe_io._too_large(path, None, exc)).startswith(f"{path} is too large to load: 123456789012 pixels")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # PIL's, on the garbage TIFF
@pytest.mark.parametrize("name, content", [("trunc.png", "png16"), ("text.tif", b"II*\x00garbage"),
                                           ("empty.png", b"")])
def test_unreadable_files_name_themselves(tmp_path, name, content):
    path = tmp_path / name
    if content == "png16":
        write_png(tmp_path / "full.png", RGB16)
        path.write_bytes((tmp_path / "full.png").read_bytes()[:80])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_image(path)


def test_cli_fits_a_16bit_png_and_reports_errors_in_one_line(tmp_path, capsys):
    from smoe_core.cli import main

    a = (np.random.default_rng(0).random((32, 32)) * 65535).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    rc = main(["fit", str(tmp_path / "g16.png"), "--kernels", "16", "--iters", "5", "--no-progress",
               "--out", str(tmp_path / "m.npz")])
    out = capsys.readouterr().out
    assert rc == 0
    psnr = float(re.search(r"PSNR: (\S+) dB", out).group(1))
    assert math.isfinite(psnr) and psnr < 60
    bomb = _png_header(tmp_path / "bomb.png", 100_000, 100_000)
    assert main(["fit", str(bomb), "--kernels", "16", "--iters", "5", "--no-progress",
                 "--out", str(tmp_path / "b.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [(f"smoe: error: {bomb} is too large to load: 100000 x 100000 pixels, more than the limit of "
                    f"{smoe_io.MAX_PIXELS} (smoe_core.io.MAX_PIXELS)")]
