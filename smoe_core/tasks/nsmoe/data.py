"""The images N-SMoE is trained and tested on here, with fixed splits ([N-SMoE] trains on public medical sets
(MRI, CT, X-ray, ultrasound, retinal and microscopy images); none of those is available here, so we use the
freely licensed medical images that ship with Python packages).

Sources (all local once the packages are installed; nothing is downloaded):

- ``pydicom-data`` 1.0.0 (MIT) and ``pydicom`` 3.0.2's own test files (MIT; its README: "I believe there is no
  restriction on using any of these files in this manner"): DICOM CT, MR, CR (computed radiography), US and NM
  images, found with ``pydicom.data.get_testdata_file(name, download=False)``. JPEG 2000 files decode through
  Pillow's OpenJPEG (in the standard Pillow wheels).
- scikit-image's bundled images, each CC0 per its docstring: ``retina`` (fundus photograph, Wikimedia, CC0),
  ``microaneurysms`` (fundus detail, FAU fundus database, CC0 by Andreas Maier), ``cell`` (microscopy, CC0),
  ``camera`` (a photograph, CC0 by Lav Varshney; not medical, kept as the brief lists it).

Which DICOM files (:data:`IMAGES`): one file per distinct picture. Left out: other encodings of the same pixels
(``*_J2KR``, big-endian, RLE, implicit-VR and deflated copies), the lossy ``*_UNCI`` / ``*_J2KI`` versions of
a listed image, crops or copies of a listed image (``examples_overlay`` of MR-SIEMENS, ``examples_palette`` and
``OBXXXX1A_2frame`` of OBXXXX1A, ``examples_rgb_color`` of US1, ``examples_ybr_color`` of the
``color3d_jpeg_baseline`` cine, ``color-px`` of ``color-pl``), files pydicom cannot decode without extra
plugins (JPEG lossless, JPEG-LS, 12-bit JPEG: ``JPEG-LL``, ``JPGLosslessP14SV1_1s_1f_8b``, ``bad_sequence``,
``JPGExtended``, ``JPEG-lossy``, ``*_jpeg_ls_*``), truncated files, test patterns and synthetic pictures
(``SC_*``, ``mlut_18``, ``vlut_04``, ``image_dfl``, ``OT-PAL-8-face``, ``GDCMJ2K_TextGBR``), segmentations
(``liver*``), dose grids (``rtdose*``) and files without pixel data (RT plans and structures, SR, ECG).

Reading (:func:`load`), 2D only, at full depth:

1. the stored values (``pydicom.pixels.pixel_array``); a multi-frame file gives its middle frame
   (index ``n // 2``), the middle slice of a volume;
2. PALETTE COLOR images through their lookup table, then like RGB; YBR images are converted to RGB by pydicom;
   RGB (and the colour scikit-image retina) to ITU-R 601 luma, 0.299 R + 0.587 G + 0.114 B, in float64;
3. normalization: **per-image min-max of these values** to [0, 1], (x - min) / (max - min), in float64, then
   float32 (24-bit mantissa: 15-bit CR data keep every level). Rescale slope and intercept are affine, so they
   do not change the result (for a positive slope); the DICOM window is not used (it is a display choice, and
   several files have none);
4. MONOCHROME1 (CR: high values dark) is inverted after normalization, 1 - x, so bright is dense everywhere.

Splits (:data:`SPLITS`, by name; :func:`assign_splits` is the rule that wrote them, checked by the tests): the
images of each modality, sorted by name, are permuted with ``numpy.random.default_rng(SPLIT_SEED)`` (one
generator, modalities in alphabetical order); the first goes to test, the second to validation when the
modality has three or more images, and the rest to training (two images: test and train; one: train). Test
images are never used for training: :func:`training_pairs` refuses them.

:func:`training_pairs` cuts random HR crops (with a margin that the degradation's borders may spoil, cut off
afterwards) and degrades them: aligned (LR, HR) arrays for the network.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SPLIT_SEED = 20240601
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class ImageEntry:
    name: str  # file name (DICOM) or scikit-image function name
    source: str  # "pydicom-data", "pydicom" or "skimage"
    modality: str  # DICOM modality, or "FUNDUS", "MICROSCOPY", "PHOTO"
    licence: str
    note: str = ""


IMAGES: tuple[ImageEntry, ...] = (
    ImageEntry("693_UNCR.dcm", "pydicom-data", "CT", "MIT", "head, 512 x 512, signed 16-bit"),
    ImageEntry("CT_small.dcm", "pydicom", "CT", "MIT", "spine, 128 x 128 (NEMA WG04 CT1, downsized)"),
    ImageEntry("explicit_VR-UN.dcm", "pydicom-data", "CT", "MIT", "abdomen, 512 x 512, JPEG 2000 lossless"),
    ImageEntry("J2K_pixelrep_mismatch.dcm", "pydicom", "CT", "MIT", "head, 512 x 512, 13-bit, JPEG 2000 lossless"),
    ImageEntry("eCT_Supplemental.dcm", "pydicom-data", "CT", "MIT", "enhanced CT, 2 frames, 512 x 512"),
    ImageEntry("MR2_UNCR.dcm", "pydicom-data", "MR", "MIT", "shoulder, 1024 x 1024, 12-bit (NEMA WG04 MR2)"),
    ImageEntry("MR-SIEMENS-DICOM-WithOverlays.dcm", "pydicom-data", "MR", "MIT", "abdomen, 484 x 484, 12-bit"),
    ImageEntry("MR_small.dcm", "pydicom", "MR", "MIT", "64 x 64 (NEMA WG04 MR1, downsized)"),
    ImageEntry("emri_small.dcm", "pydicom-data", "MR", "MIT", "10 frames, 64 x 64, 12-bit"),
    ImageEntry("RG1_UNCR.dcm", "pydicom-data", "CR", "MIT", "chest, 1955 x 1841, 15-bit, MONOCHROME1"),
    ImageEntry("RG3_UNCR.dcm", "pydicom-data", "CR", "MIT", "leg, 1760 x 1760, 10-bit, MONOCHROME1"),
    ImageEntry("OBXXXX1A.dcm", "pydicom-data", "US", "MIT", "obstetric, 600 x 800, palette colour"),
    ImageEntry("US1_UNCR.dcm", "pydicom-data", "US", "MIT", "lymph node, 480 x 640, RGB (NEMA WG04 US1)"),
    ImageEntry("color-pl.dcm", "pydicom-data", "US", "MIT", "120 x 256, RGB"),
    ImageEntry("gdcm-US-ALOKA-16.dcm", "pydicom-data", "US", "MIT", "pelvis, 480 x 640, 16-bit palette colour"),
    ImageEntry("color3d_jpeg_baseline.dcm", "pydicom-data", "US", "MIT", "cine, 120 frames, 480 x 640, YBR JPEG"),
    ImageEntry("ExplVR_BigEnd.dcm", "pydicom", "US", "MIT", "epicardial, 60 x 80, RGB"),
    ImageEntry("JPEG2000_UNC.dcm", "pydicom-data", "NM", "MIT", "1024 x 256, signed 16-bit (NEMA WG04 NM1)"),
    ImageEntry("retina", "skimage", "FUNDUS", "CC0", "fundus photograph, 1411 x 1411, RGB"),
    ImageEntry("microaneurysms", "skimage", "FUNDUS", "CC0", "fundus detail, 102 x 102"),
    ImageEntry("cell", "skimage", "MICROSCOPY", "CC0", "660 x 550"),
    ImageEntry("camera", "skimage", "PHOTO", "CC0", "photograph, 512 x 512"),
)

BY_NAME = {e.name: e for e in IMAGES}

#: The fixed splits (written by :func:`assign_splits` with :data:`SPLIT_SEED`; the tests check they agree).
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("ExplVR_BigEnd.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG2000_UNC.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
              "MR_small.dcm", "OBXXXX1A.dcm", "RG1_UNCR.dcm", "US1_UNCR.dcm", "camera", "cell",
              "eCT_Supplemental.dcm", "explicit_VR-UN.dcm", "gdcm-US-ALOKA-16.dcm", "microaneurysms"),
    "val": ("CT_small.dcm", "color-pl.dcm", "emri_small.dcm"),
    "test": ("693_UNCR.dcm", "MR2_UNCR.dcm", "RG3_UNCR.dcm", "color3d_jpeg_baseline.dcm", "retina"),
}


def assign_splits(entries=IMAGES, seed: int = SPLIT_SEED) -> dict[str, tuple[str, ...]]:
    """The split rule (module docstring): per modality, a seeded permutation; test first, then validation."""
    rng = np.random.default_rng(int(seed))
    out: dict[str, list[str]] = {s: [] for s in SPLIT_NAMES}
    for modality in sorted({e.modality for e in entries}):
        group = sorted(e.name for e in entries if e.modality == modality)
        group = [group[i] for i in rng.permutation(len(group))]
        if len(group) >= 2:
            out["test"].append(group.pop(0))
        if len(group) >= 2:
            out["val"].append(group.pop(0))
        out["train"] += group
    return {s: tuple(sorted(v)) for s, v in out.items()}


def split_of(name: str) -> str:
    for split, names in SPLITS.items():
        if name in names:
            return split
    raise KeyError(f"{name!r} is in no split")


def names(split: str | None = None, modality: str | None = None) -> list[str]:
    """Image names of a split (all when None), optionally of one modality, in :data:`IMAGES` order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    keep = set(SPLITS[split]) if split is not None else set(BY_NAME)
    return [e.name for e in IMAGES if e.name in keep and (modality is None or e.modality == modality)]


# ---------------------------------------------------------------------- reading
def dicom_path(name: str) -> str:
    """The local path of a pydicom / pydicom-data file (FileNotFoundError without pydicom-data)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (pip install pydicom==3.0.2 pydicom-data==1.0.0)")
    return str(path)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def read_dicom_values(path) -> tuple[np.ndarray, str]:
    """(float64 (H, W) values of the middle frame after the palette / colour rules, photometric interpretation)."""
    import pydicom
    from pydicom.pixels import apply_color_lut, pixel_array

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise ValueError(f"{path} has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's notes on odd but readable headers
        arr = pixel_array(ds, index=frames // 2 if frames > 1 else None)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        return _luma(arr), photometric
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2D frame, got shape {arr.shape}")
    return arr.astype(np.float64), photometric


def normalize(values: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] (float64 arithmetic, float32 result)."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        raise ValueError("a constant image cannot be normalized")
    return ((v - lo) / (hi - lo)).astype(np.float32)


@lru_cache(maxsize=None)
def _load_cached(name: str) -> np.ndarray:
    entry = BY_NAME.get(name)
    if entry is None:
        raise KeyError(f"unknown image {name!r} (see smoe_core.tasks.nsmoe.data.IMAGES)")
    if entry.source == "skimage":
        import skimage.data

        arr = np.asarray(getattr(skimage.data, name)())
        img = normalize(_luma(arr) if arr.ndim == 3 else arr)
    else:
        values, photometric = read_dicom_values(dicom_path(name))
        img = normalize(values)
        if photometric == "MONOCHROME1":
            img = (1.0 - img).astype(np.float32)
    img.setflags(write=False)
    return img


def load(name: str) -> np.ndarray:
    """The image ``name`` as a read-only float32 (H, W) array in [0, 1] (module docstring; cached)."""
    return _load_cached(name)


def load_split(split: str, modality: str | None = None) -> dict[str, np.ndarray]:
    return {n: load(n) for n in names(split, modality)}


# ---------------------------------------------------------------------- training pairs
def training_pairs(split_or_names, n: int, lr_size: int, scale: int, degradation, seed: int = 0,
                   margin: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``n`` aligned pairs: LR (n, lr_size, lr_size) and HR (n, lr_size s, lr_size s), float32.

    Each pair: an image drawn uniformly among those at least ``(lr_size + 2 margin) s`` px a side, a random
    crop of that size, ``degradation(crop) -> (lr, hr)`` (e.g. :class:`~.degrade.Degradation`), then the
    central ``lr_size`` LR px and the matching HR px (the margin absorbs the degradation's border effects).
    ``split_or_names``: "train" or "val", or a list of image names; test images are refused.
    """
    if isinstance(split_or_names, str):
        if split_or_names == "test":
            raise ValueError("test images are never used for training")
        pool = names(split_or_names)
    else:
        pool = list(split_or_names)
        leaked = sorted(set(pool) & set(SPLITS["test"]))
        if leaked:
            raise ValueError(f"test images are never used for training: {leaked}")
    s = int(scale)
    side = (int(lr_size) + 2 * int(margin)) * s
    images = [load(p) for p in pool]
    images = [im for im in images if min(im.shape) >= side]
    if not images:
        raise ValueError(f"no image is {side} px a side")
    rng = np.random.default_rng(int(seed))
    lrs, hrs = [], []
    for _ in range(int(n)):
        im = images[int(rng.integers(len(images)))]
        r, c = int(rng.integers(im.shape[0] - side + 1)), int(rng.integers(im.shape[1] - side + 1))
        lr, hr = degradation(np.array(im[r:r + side, c:c + side]))
        m = int(margin)
        lrs.append(lr[m:m + lr_size, m:m + lr_size])
        hrs.append(hr[m * s:(m + lr_size) * s, m * s:(m + lr_size) * s])
    return np.stack(lrs).astype(np.float32), np.stack(hrs).astype(np.float32)
