"""Image input/output: float32 images in [0, 1], shaped (H, W) for gray and (H, W, 3) for colour.

Gray is ITU-R 601 luma as PIL's ``ImageOps.grayscale`` computes it (L = 0.299 R + 0.587 G + 0.114 B,
rounded to 8 bits), which is what the SMoE papers' authors used.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

TEST_IMAGES = ("barbara", "flower", "parrot", "peppers")


def image_key(name_or_path) -> str:
    """The short name of an image: a test image's name, or a path's file stem, lower case."""
    return Path(str(name_or_path)).stem.lower()


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
    """Loads an image as float32 in [0, 1]: (H, W) ITU-R 601 luma, or (H, W, 3) RGB with ``color=True``."""
    path = resolve_image_path(name_or_path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if color:
                arr = np.asarray(im.convert("RGB"))
            else:
                arr = np.asarray(ImageOps.grayscale(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read {path} as an image ({exc})") from exc
    return (arr.astype(np.float32) / 255.0)


def check_image(image) -> np.ndarray:
    """Validates a float image in [0, 1] shaped (H, W) or (H, W, C); returns it as float32."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and not 1 <= arr.shape[2] <= 4) or min(arr.shape[:2]) < 1:
        raise ValueError(f"an image must be shaped (H, W) or (H, W, C) with C <= 4, got {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("the image contains NaN or infinite values")
    return arr


def save_image(path, image) -> Path:
    """Writes a [0, 1] float image as 8-bit PNG (clipped, rounded); atomic (temporary file, then rename)."""
    path = Path(path)
    arr = check_image(image)
    u8 = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    if u8.ndim == 3 and u8.shape[2] == 1:
        u8 = u8[..., 0]
    tmp = path.with_name(f".{path.name}.tmp")
    fmt = (path.suffix.lstrip(".") or "png").upper()
    Image.fromarray(u8).save(tmp, format="JPEG" if fmt == "JPG" else fmt)
    tmp.replace(path)
    return path
