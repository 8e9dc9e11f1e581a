"""N-SMoE data (smoe_core.tasks.nsmoe.data): the DICOM and scikit-image sets, full-depth reading, normalization and
the fixed splits. Skipped without pydicom-data (pip install pydicom==3.0.2 pydicom-data==1.0.0)."""
from __future__ import annotations

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("data_store", reason="pydicom-data is not installed")

from smoe_core.tasks.nsmoe import data as dt  # noqa: E402
from smoe_core.tasks.nsmoe.degrade import Degradation  # noqa: E402


def test_splits_are_disjoint_complete_and_written_by_the_seeded_rule():
    sets = {k: set(v) for k, v in dt.SPLITS.items()}
    assert set(sets) == set(dt.SPLIT_NAMES)
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(dt.BY_NAME)
    assert dt.assign_splits() == dt.SPLITS  # the literal table is the rule's output
    assert dt.assign_splits() == dt.assign_splits()  # deterministic
    assert dt.assign_splits(seed=1) != dt.SPLITS  # and depends on the seed
    # every modality with two or more images has one in test
    for mod in {e.modality for e in dt.IMAGES}:
        if len(dt.names(modality=mod)) >= 2:
            assert dt.names("test", mod), mod
    assert dt.split_of("retina") == "test" and dt.names("test") == [n for n in dt.BY_NAME if n in sets["test"]]


def test_every_image_loads_in_unit_range_as_float32_2d():
    for e in dt.IMAGES:
        img = dt.load(e.name)
        assert img.ndim == 2 and img.dtype == np.float32, e.name
        assert img.min() == 0.0 and img.max() == 1.0, e.name
        assert not img.flags.writeable
    assert dt.load("RG1_UNCR.dcm").shape == (1955, 1841) and dt.load("retina").shape == (1411, 1411)


def test_sixteen_bit_data_keep_their_depth():
    """15-bit CR and 16-bit CT keep far more than 256 levels, and the normalization is the min-max of the stored
    values (MONOCHROME1 inverted)."""
    ds = pydicom.dcmread(dt.dicom_path("RG1_UNCR.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    img = dt.load("RG1_UNCR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15
    assert len(np.unique(img)) == len(np.unique(raw)) > 20000
    assert np.allclose(img, 1 - (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    ct = dt.load("693_UNCR.dcm")
    ct_raw = pydicom.dcmread(dt.dicom_path("693_UNCR.dcm")).pixel_array
    assert ct_raw.dtype == np.int16 and len(np.unique(ct)) == len(np.unique(ct_raw)) > 2000


def test_multiframe_files_give_their_middle_frame():
    from pydicom.pixels import pixel_array

    path = dt.dicom_path("emri_small.dcm")
    frames = pixel_array(path)
    assert frames.shape == (10, 64, 64)
    assert np.allclose(dt.load("emri_small.dcm"), dt.normalize(frames[5]))


def test_training_pairs_refuse_test_images_and_are_seeded():
    with pytest.raises(ValueError):
        dt.training_pairs("test", 2, 16, 2, Degradation(2))
    with pytest.raises(ValueError):
        dt.training_pairs(["camera", "retina"], 2, 16, 2, Degradation(2))
    lr, hr = dt.training_pairs(["camera", "cell"], 3, 16, 2, Degradation(2, seed=1), seed=4)
    assert lr.shape == (3, 16, 16) and hr.shape == (3, 32, 32) and lr.dtype == hr.dtype == np.float32
    lr2, hr2 = dt.training_pairs(["camera", "cell"], 3, 16, 2, Degradation(2, seed=1), seed=4)
    assert np.array_equal(lr, lr2) and np.array_equal(hr, hr2)
    # plain bicubic mode: the LR crop is the bicubic reduction of its HR crop (away from the margin)
    lr3, hr3 = dt.training_pairs(["camera"], 2, 16, 2, Degradation(2, mode="bicubic_blur"), seed=0, margin=4)
    assert np.abs(lr3 - hr3.reshape(2, 16, 2, 16, 2).mean((2, 4))).mean() < 0.03
